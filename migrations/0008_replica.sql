-- What a read replica (a standby's HTTP side, an HTTP worker) needs beyond what a
-- restart reads: when a recovering incident's root answered again (its callers hear
-- "restored"), whether the leader is blind, and an order on node states, so that a
-- replica told "states changed" reads only the rows written since it last looked.
-- The leader's writes announce themselves with pg_notify('outagemon_replica', ...).
alter table incident add column recovering_since timestamptz;
create sequence node_state_seq;
alter table node_state add column seq bigint not null default 0;
create index node_state_seq_idx on node_state (seq);
create table monitor_view (
    id     integer primary key check (id = 1),
    blind  boolean not null default false
);
insert into monitor_view (id) values (1);
