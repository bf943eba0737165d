"""Logic of the Claude agent backend, layered: web edge -> services -> adapters."""
