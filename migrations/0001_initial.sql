-- outagemon's first schema: the network as last loaded, node states, incidents and
-- their timelines, planned works. Times are timestamptz; ids of nodes are the topology's.

create table node (
    id          text primary key,
    kind        text not null,
    ip          inet,
    name        text not null default '',
    parents     text[] not null default '{}',
    loaded_at   timestamptz not null default now(),
    removed_at  timestamptz              -- set when a reload drops the node; incidents keep it
);
create index node_ip on node (ip) where ip is not null;

create table node_state (
    node_id     text primary key references node (id) on update cascade,
    state       text not null check (state in ('unknown', 'up', 'down', 'degraded')),
    changed_at  timestamptz not null,
    loss        real not null default 0
);

create table incident (
    id           bigint generated always as identity primary key,
    state        text not null check (state in ('open', 'resolved', 'merged')),
    kind         text not null check (kind in ('outage', 'maintenance')),
    root_node    text not null references node (id) on update cascade,
    inferred     boolean not null default false,
    opened_at    timestamptz not null,
    resolved_at  timestamptz,
    eta          timestamptz,
    merged_into  bigint references incident (id),
    subscribers  integer not null default 0,
    calls        integer not null default 0
);
-- One open incident per root: a restarted daemon finds it instead of opening another.
create unique index incident_open_root on incident (root_node) where state = 'open';
create index incident_opened on incident (opened_at desc);

create table incident_node (
    incident_id  bigint not null references incident (id) on delete cascade,
    node_id      text not null references node (id) on update cascade,
    primary key (incident_id, node_id)
);

create table incident_event (
    id           bigint generated always as identity primary key,
    incident_id  bigint not null references incident (id) on delete cascade,
    at           timestamptz not null,
    kind         text not null,   -- opened, node_added, merged, eta, note, kind_changed, resolved
    detail       jsonb not null default '{}'
);
create index incident_event_incident on incident_event (incident_id, at);

create table maintenance (
    id          bigint generated always as identity primary key,
    node_id     text not null references node (id) on update cascade,
    starts_at   timestamptz not null,
    ends_at     timestamptz not null check (ends_at > starts_at),
    reason      text not null default '',
    created_by  text not null default '',
    created_at  timestamptz not null default now()
);
create index maintenance_ends on maintenance (ends_at);
