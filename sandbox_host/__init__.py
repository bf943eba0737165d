"""The sandbox host: runs bubblewrap sandboxes for sessions, behind an authenticated HTTP API."""
