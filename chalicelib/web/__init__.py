"""The HTTP edge: request parsing, auth and error mapping around the Chalice routes."""
