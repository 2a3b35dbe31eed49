-- Two or more hosts on one database: the one row of the leader's lease. `epoch` goes up
-- each time the lease changes hands (or lapses); every write of an incident checks it,
-- so a leader that was paused or cut off and comes back cannot write (fencing).
-- `expires_at` is on the database's clock: the hosts' clocks never have to agree.
create table cluster_lease (
    id          smallint primary key default 1 check (id = 1),
    holder      text not null default '',
    epoch       bigint not null default 0,
    expires_at  timestamptz not null default '-infinity',
    renewed_at  timestamptz
);
insert into cluster_lease default values;
