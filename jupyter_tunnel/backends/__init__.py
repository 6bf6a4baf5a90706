"""Backends: the only modules that talk SSH (paramiko and sshtunnel in process, or the
system's OpenSSH client)."""

from __future__ import annotations

import shutil

from .base import Backend, DeadCallback, NoticeCallback, ProgressCallback

#: the names ``make_backend`` knows
BACKENDS = ("auto", "openssh", "sshtunnel")


def resolve_name(name: str) -> str:
    """The backend ``auto`` stands for here: ``openssh`` when an ``ssh`` client is on the
    PATH (it carries the data in C, as fast as ``ssh -J … -L``, and shares one login among
    tunnels to the same hosts), else ``sshtunnel`` (in process, nothing to install)."""
    if name == "auto":
        from .openssh_master import SSH

        return "openssh" if shutil.which(SSH) else "sshtunnel"
    return name


def make_backend(name: str = "auto", hold_timeout: float = 20.0, *,
                 keepalive_interval: int = 15, keepalive_count_max: int = 3) -> Backend:
    """The backend called ``name``; new connections wait up to ``hold_timeout`` seconds for
    a lost SSH connection to come back; keepalives every ``keepalive_interval`` seconds, a
    hop dead after ``keepalive_count_max`` unanswered (unless the ssh config says)."""
    chosen = resolve_name(name)
    if chosen == "sshtunnel":
        from .sshtunnel_backend import SSHTunnelBackend

        return SSHTunnelBackend(hold_timeout)
    if chosen == "openssh":
        from .openssh_backend import OpenSSHBackend
        from .openssh_master import SSH

        if not shutil.which(SSH):
            from ..errors import ConfigError

            raise ConfigError("backend 'openssh' needs the ssh client, which is not on the "
                              "PATH: install OpenSSH (apt-get install openssh-client), or use "
                              "--backend sshtunnel")

        return OpenSSHBackend(hold_timeout, keepalive_interval, keepalive_count_max)
    from ..errors import SpecError

    raise SpecError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "DeadCallback", "NoticeCallback", "ProgressCallback",
           "make_backend", "resolve_name"]
