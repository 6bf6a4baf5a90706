"""Backends: the only modules that talk SSH (paramiko, sshtunnel)."""

from __future__ import annotations

from .base import Backend, DeadCallback, NoticeCallback, ProgressCallback


def make_backend(name: str = "sshtunnel") -> Backend:
    """The backend called ``name``."""
    if name in ("sshtunnel", "auto"):
        from .sshtunnel_backend import SSHTunnelBackend

        return SSHTunnelBackend()
    from ..errors import SpecError

    raise SpecError(f"unknown backend {name!r}: choose 'sshtunnel' or 'auto'")


__all__ = ["Backend", "DeadCallback", "NoticeCallback", "ProgressCallback", "make_backend"]
