"""Sandboxes: an isolated /workspace per session, local (bubblewrap) or on a sandbox host."""
