"""How large a REST request body may be, per kind of body.

Kept apart from the services that enforce them so that app.py can name them without importing
every service (and building its models) at a cold start.
"""

MAX_CONVERSATION_BYTES = 5 * 1024 * 1024
MAX_SETTINGS_BYTES = 256 * 1024
MAX_SKILL_UPLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
