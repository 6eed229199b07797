"""serve-local's published settings (``grants serve-local`` in the app's checkout): for local use only."""

from __future__ import annotations

from typing import Final

__all__ = ["LOCAL_PORT", "LOCAL_WEBHOOK_SECRET", "local_url"]

#: serve-local's default port.
LOCAL_PORT: Final = 7071
#: The secret serve-local's webhook producer ``ticketing`` signs with unless ``GRANTS_WEBHOOK_SECRET`` is set
#: (published, so no secret: never deploy it).
LOCAL_WEBHOOK_SECRET: Final = "local-only-webhook-secret-do-not-deploy"  # noqa: S105 (published: local use only)


def local_url(port: int) -> str:
    """serve-local's base URL on `port`."""
    return f"http://127.0.0.1:{port}"
