"""Backends: the only modules that talk SSH (paramiko, sshtunnel)."""

from __future__ import annotations

from .base import Backend, DeadCallback, NoticeCallback, ProgressCallback


def make_backend(name: str = "sshtunnel", hold_timeout: float = 20.0) -> Backend:
    """The backend called ``name``; new connections wait up to ``hold_timeout`` seconds for
    a lost SSH connection to come back."""
    if name in ("sshtunnel", "auto"):
        from .sshtunnel_backend import SSHTunnelBackend

        return SSHTunnelBackend(hold_timeout)
    from ..errors import SpecError

    raise SpecError(f"unknown backend {name!r}: choose 'sshtunnel' or 'auto'")


__all__ = ["Backend", "DeadCallback", "NoticeCallback", "ProgressCallback", "make_backend"]
