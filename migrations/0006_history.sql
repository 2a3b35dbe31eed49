-- Outage history: who was cut off, from when to when, and why; the inventory as it was.
--
-- impact:            one row per (incident, node, cause) stretch (subscribers' own routers,
--                    cpe:ACCOUNT, are left out: a subscriber is matched by serving node): the node was cut
--                    off by the incident from started_at to ended_at (null: still is).
--                    A node that leaves an incident, an incident that starts recovering,
--                    resolves or is merged closes its rows; a kind change (planned works
--                    that overran become an outage) closes them and opens new ones.
-- blind_period:      when the monitor could not see (every anchor down: 'blind'; the
--                    daemon not running: 'stopped'). Impact inside one is unverified.
-- inventory_version: each load or reload of the directory (CSV), with what changed.
-- subscriber_period: an account served by a node at an address from valid_from to
--                    valid_to (null: still is). A subscriber added after an incident is
--                    not in it; one removed keeps their history; a move opens a new row.
-- monitor_run:       each start of the daemon and the last time it was known alive, so
--                    the gap to the next start is a 'stopped' blind period.
-- call_minute:       /check answers per minute and incident (0: none named), for the
--                    calls-per-minute chart.
-- node.attrs:        operator-defined fields of a node (e.g. {"district": "north"}).

create table impact (
    id           bigint generated always as identity primary key,
    incident_id  bigint not null references incident (id) on delete cascade,
    node_id      text not null,
    cause        text not null check (cause in ('outage', 'maintenance')),
    started_at   timestamptz not null,
    ended_at     timestamptz,
    check (ended_at is null or ended_at >= started_at)
);
create index impact_node on impact (node_id, started_at);
create index impact_incident_open on impact (incident_id) where ended_at is null;
create index impact_incident on impact (incident_id);
create index impact_period on impact (started_at, ended_at);

create table blind_period (
    id          bigint generated always as identity primary key,
    reason      text not null check (reason in ('blind', 'stopped')),
    started_at  timestamptz not null,
    ended_at    timestamptz,
    check (ended_at is null or ended_at >= started_at)
);
create index blind_period_started on blind_period (started_at);

create table inventory_version (
    id           bigint generated always as identity primary key,
    loaded_at    timestamptz not null,
    subscribers  integer not null,
    added        integer not null default 0,
    removed      integer not null default 0,
    changed      integer not null default 0
);

create table subscriber_period (
    id            bigint generated always as identity primary key,
    account       text not null,
    node_id       text not null,           -- the serving node (impact.node_id)
    address       text not null,
    flat          text not null default '',
    phones        text[] not null default '{}',
    valid_from    timestamptz not null,
    valid_to      timestamptz,
    version_from  bigint references inventory_version (id),
    version_to    bigint references inventory_version (id),
    check (valid_to is null or valid_to >= valid_from)
);
create index subscriber_period_account on subscriber_period (account, valid_from);
create index subscriber_period_node on subscriber_period (node_id, valid_from);
create unique index subscriber_period_current on subscriber_period (account)
    where valid_to is null;
create index subscriber_period_address on subscriber_period (address, flat);

create table monitor_run (
    id          bigint generated always as identity primary key,
    started_at  timestamptz not null,
    seen_at     timestamptz not null,
    stopped_at  timestamptz
);

create table call_minute (
    minute       timestamptz not null,
    incident_id  bigint not null default 0,
    calls        integer not null,
    primary key (minute, incident_id)
);

alter table node add column attrs jsonb not null default '{}';

-- History from before this migration, as well as it can be told: each stored incident cut
-- off its last stored nodes from opening to resolution, for its last kind; the subscribers
-- already loaded were there all along (their start is unknown).
insert into impact (incident_id, node_id, cause, started_at, ended_at)
select i.id, n.node_id, i.kind, i.opened_at,
       case when i.state = 'open' then null else greatest(i.resolved_at, i.opened_at) end
from incident i join incident_node n on n.incident_id = i.id
where n.node_id not like 'cpe:%';

-- (subscriber.node_id is the subscriber's router, cpe:ACCOUNT, when it is probed: its
-- parent is the serving node.)
insert into subscriber_period (account, node_id, address, flat, phones, valid_from)
select s.account, coalesce(case when s.node_id like 'cpe:%' then n.parents[1] end, s.node_id),
       s.address, s.flat, s.phones, '-infinity'
from subscriber s left join node n on n.id = s.node_id;

-- Seconds covered by a multirange (impact and blind time are added up as multiranges, so
-- overlapping incidents count once).
create function multirange_seconds(tstzmultirange) returns numeric
language sql immutable strict parallel safe
as $$ select coalesce(sum(extract(epoch from upper(r) - lower(r))), 0) from unnest($1) r $$;
