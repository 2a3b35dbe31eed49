-- Suspected incidents (issue 18): raised from clusters of calls the probes cannot explain.
-- An incident says who raised it; the probes' open incidents stay one per root, while a
-- place may also have one raised by calls until the probes' incident takes it over.
alter table incident drop constraint incident_kind_check;
alter table incident add constraint incident_kind_check
    check (kind in ('outage', 'maintenance', 'suspected'));
alter table incident add column raised_by text not null default 'probes'
    check (raised_by in ('probes', 'calls'));
drop index incident_open_root;
create unique index incident_open_root on incident (root_node)
    where state = 'open' and raised_by = 'probes';
