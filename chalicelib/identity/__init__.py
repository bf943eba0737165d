"""Who is calling: the operator (API_KEY) or one end user (a verified user token)."""
