"""Telling people: incidents pushed to Alertmanager (API v2) and to signed webhooks, from
the outbox the journal writes in the same transaction as each incident change."""
