"""What every front end does with remote kernels (CLI, magics, REST): list a target's
kernelspecs, install local ones for them, remove ours, show the kernels running.

Each call that reaches the target opens a short-lived tunnel (``connect``) and closes it.
Errors are :class:`~jupyter_tunnel.errors.TunnelError`\\ s, mapped once by each front end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import SpecError
from ..login.questions import Ask
from ..manager import TunnelManager
from . import specs
from .connect import connect

__all__ = ["install_remote", "installed", "list_remote", "remove", "running"]


def list_remote(target: str, via: Iterable[str] | None = None, *,
                ssh_config: str | None = None, manager: TunnelManager | None = None,
                ask: Ask | None = None) -> list[dict[str, str]]:
    """The kernelspecs ``target`` offers: ``[{name, display_name, language,
    interrupt_mode}]``; a hop that asks asks through ``ask``."""
    made = connect(target, via, ssh_config=ssh_config, manager=manager, ask=ask)
    try:
        found = made.kernels.specs()
    finally:
        made.tunnel.close()
    return [{"name": name, **info} for name, info in found.items()]


def install_remote(target: str, via: Iterable[str] | None = None, *,
                   kernels: Iterable[str] | None = None, cwd: str = "",
                   ssh_config: str | None = None, manager: TunnelManager | None = None,
                   ask: Ask | None = None) -> list[dict[str, Any]]:
    """Install a local kernelspec for each of ``kernels`` on ``target`` (all by default);
    what was installed."""
    via = list(via or [])
    offered = {item["name"]: item for item in list_remote(target, via, ssh_config=ssh_config,
                                                          manager=manager, ask=ask)}
    wanted = list(kernels or []) or list(offered)
    missing = [k for k in wanted if k not in offered]
    if missing:
        raise SpecError(f"{target} has no kernel {missing[0]!r}: it offers "
                        f"{', '.join(offered) or 'none'}")
    if cwd and ("\0" in cwd or "\n" in cwd):
        raise SpecError("cwd must be a folder path")
    return [specs.install(target, via, kernel, offered[kernel], ssh_config=ssh_config or "",
                          cwd=cwd) for kernel in wanted]


def installed() -> list[dict[str, Any]]:
    """The kernelspecs jupyter_tunnel installed (name, display_name, remote_kernel, target,
    via, resource_dir)."""
    return specs.installed()


def remove(names: Iterable[str] = (), *, remove_all: bool = False) -> list[str]:
    """Remove kernelspecs of ours by name (or all of them); the names removed."""
    names = list(names)
    if remove_all:
        names += [k["name"] for k in specs.installed() if k["name"] not in names]
    elif not names:
        raise SpecError("name the kernelspecs to remove, or give --all")
    for name in names:
        specs.remove(name)
    return names


def running(manager: TunnelManager) -> list[dict[str, Any]]:
    """The remote kernels started through jupyter_tunnel that this machine knows of (the
    registry's kernel tunnels): kernelspec, owner, tunnel, remote pid, state."""
    found = []
    for record in manager.list():
        kernel = record.get("kernel")
        if not isinstance(kernel, dict):
            continue
        state = "orphaned" if record.get("orphaned") else record.get("state")
        found.append({"kernel": kernel.get("kernelspec"), "remote_kernel":
                      kernel.get("remote_kernel"), "id": kernel.get("id"),
                      "target": record.get("target"), "tunnel": record.get("name"),
                      "owner": record.get("owner"), "owner_pid": record.get("pid"),
                      "remote_pid": kernel.get("pid"), "state": state})
    return found
