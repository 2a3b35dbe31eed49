"""Simulated networks, generated cities and the demo: never imported by the daemon."""
