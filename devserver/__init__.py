"""The local gateway: what API Gateway does in AWS, on one local port (./scripts/dev).

REST requests go through Chalice's own local request translation; /ws emulates API Gateway's
WebSocket API ($connect / $default / $disconnect events) and its management API; the Lambda
Invoke API is emulated too, so the turn runner starts exactly as it does in AWS. Local only:
nothing in the Lambda path imports this package.
"""
