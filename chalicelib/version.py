"""The product version reported by GET /health."""

__version__ = "0.1.0"
