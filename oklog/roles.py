"""Node roles: ``ingest``, ``store`` or ``ingeststore``, and the tiers each runs.

The role is a node's mode on the command line and its ``oklog.role`` tag in
the cluster; this is the one place that says which tiers a role serves.
"""

from __future__ import annotations

from .errors import ConfigError

ROLES = ("ingest", "store", "ingeststore")


def serves_ingest(role: str) -> bool:
    return role in ("ingest", "ingeststore")


def serves_store(role: str) -> bool:
    return role in ("store", "ingeststore")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def tiers(role: str) -> tuple[str, ...]:
    """The tiers a node of this role runs: ``("ingest",)``, ``("store",)`` or both."""
    check_role(role)
    return tuple(t for t, on in (("ingest", serves_ingest(role)), ("store", serves_store(role))) if on)
