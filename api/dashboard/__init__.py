"""The dashboard at `/`: sign in with an API key, then watch the tenant's jobs, batches and models."""

from api.dashboard.pages import bp

__all__ = ["bp"]
