"""The agent: Claude through the anthropic SDK, with tools that run in the session's sandbox."""
