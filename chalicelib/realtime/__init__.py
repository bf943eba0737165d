"""The agent over WebSocket: frames, per-session state, the turn runner and event replay."""
