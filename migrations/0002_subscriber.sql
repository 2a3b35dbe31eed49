-- Subscribers as last loaded from the CRM export; the phone menu answers from memory,
-- this copy is for reports and for incidents' subscriber lists to survive reloads.
create table subscriber (
    account     text primary key,
    phones      text[] not null default '{}',
    address     text not null,
    flat        text not null default '',
    ip          inet,
    node_id     text not null,
    loaded_at   timestamptz not null default now()
);
create index subscriber_node on subscriber (node_id);
