"""The one way every stage joins Ray, so all of them agree on where the cluster is."""

from __future__ import annotations

import os


def ensure_ray(address: str | None = None) -> None:
    """Start or join Ray once per process: `address`, else RAY_ADDRESS (set inside `ray job submit`), else a new
    private local cluster, never a stale "latest cluster" left on this machine. `address="auto"` joins one started
    here with `ray start`."""
    import ray

    if not ray.is_initialized():
        # A new local cluster turns token authentication on by itself and warns about it; saying so is the same
        # setting without the warning. A cluster joined by address keeps its own mode.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level="WARNING")
