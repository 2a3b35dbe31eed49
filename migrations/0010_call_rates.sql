-- Callers as sensors: what the detector learned of the usual calls, so that a restart
-- keeps it (core/calls.py CallWatch.baseline): each node's decayed count of calls
-- (kind 'node', key: the node id), the day's shape (kind 'hour', key '0'..'23') and when
-- the history began (kind 'since', count 0). Replaced as a whole by each save; at most one
-- row per node of the topology, 24 hours and one 'since'.
create table call_rate (
    kind   text not null check (kind in ('node', 'hour', 'since')),
    key    text not null,
    count  double precision not null check (count >= 0),
    at     timestamptz not null,
    primary key (kind, key)
);
