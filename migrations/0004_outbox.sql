-- Notifications (Alertmanager, webhooks) as an outbox: one row per incident change that
-- someone may be told about, written in the same transaction as the change, with the
-- incident as that transaction left it. Each target keeps how far it got; a row is never
-- changed once written, so a target that is down for an hour only falls behind.
create table alert_outbox (
    id           bigint generated always as identity primary key,
    incident_id  bigint not null,
    revision     integer not null,   -- 1, 2, ... per incident: the key is incident_id:revision
    event        text not null,      -- opened, reopened, eta, note, root_moved, kind_changed, merged, resolved
    at           timestamptz not null,
    incident     jsonb not null,
    created_at   timestamptz not null default now(),
    -- A write replayed from the journal file after a crash adds nothing.
    unique (incident_id, event, at),
    unique (incident_id, revision)
);

create table alert_target (
    target      text primary key,    -- "alertmanager <url>" or "webhook <url>"
    last_id     bigint not null,     -- outbox rows up to this one are done (delivered or given up)
    updated_at  timestamptz not null default now()
);
