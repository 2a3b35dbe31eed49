-- Callers answered by a standby reach the leader through the database (issue 16): a
-- standby's /check records (for the callers' detector, core/calls.py) and its answers'
-- counts per incident wait here until the leader takes them, in a transaction fenced by
-- its epoch (a deposed leader cannot take them; the next one does). Times are the
-- database's: no two hosts' clocks are compared. Callers are keyed hashes, never as given,
-- keyed by one salt that every node of the cluster shares (`cluster_lease.call_salt`), so
-- a caller who asks both hosts is one caller.
create table cluster_call_count (
    id           bigint generated always as identity primary key,
    node         text not null,
    at           timestamptz not null default clock_timestamp(),
    incident_id  bigint not null,
    calls        integer not null check (calls > 0)
);
create table cluster_call_record (
    id        bigint generated always as identity primary key,
    node      text not null,
    at        timestamptz not null default clock_timestamp(),
    place     text not null,
    building  text not null,
    caller    text not null,
    channel   text not null,
    status    text not null,
    router    text not null
);
alter table cluster_lease add column call_salt bytea not null
    default decode(md5(gen_random_uuid()::text || clock_timestamp()::text), 'hex');
-- A cluster's node writes its monitor_run row when it begins to lead (one per term, with
-- its name and epoch), not when it starts: a standby's start is no gap in what was seen.
alter table monitor_run add column node text, add column epoch bigint;
