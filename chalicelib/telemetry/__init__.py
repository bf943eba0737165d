"""Telemetry: structured logs tied to the request, session, turn and user they concern."""
