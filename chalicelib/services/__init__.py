"""Domain services: skills, conversations, settings, users, sessions, health."""
