"""The one way every stage joins Ray, so all of them agree on where the cluster is."""

from __future__ import annotations

import logging
import os

# Ray warns, on every new local cluster, that it turned token authentication on by itself: it is the setting we want,
# and the warning is all a newcomer sees of it. (Setting RAY_AUTH_MODE here instead would not do: Ray reads it into
# its native config at import, and a driver and a GCS that disagree on it cannot talk.)
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TOKEN_AUTH_NOTICE not in record.getMessage()


def ensure_ray(address: str | None = None) -> None:
    """Start or join Ray once per process: `address`, else RAY_ADDRESS (set inside `ray job submit`), else a new
    private local cluster, never a stale "latest cluster" left on this machine. `address="auto"` joins one started
    here with `ray start`."""
    import ray

    if not ray.is_initialized():
        source = logging.getLogger("ray._private.authentication.authentication_token_setup")
        if not any(isinstance(f, _DropTokenNotice) for f in source.filters):
            source.addFilter(_DropTokenNotice())
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level="WARNING")
