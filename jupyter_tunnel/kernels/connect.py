"""A tunnel to the target of remote kernels, and the kernels there.

The tunnel forwards nothing at first (no Jupyter forward): a kernel's ports are added once
it runs (``Tunnel.add_forward``).  The target's newest Jupyter server, if one runs, gives
the Python that knows its kernelspecs and the kernels' default working folder.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from .. import detect
from ..errors import RemoteJupyterNotFound
from ..login.questions import Ask
from ..manager import TunnelManager
from ..tunnel import Tunnel
from .remote import RemoteKernels

__all__ = ["Connected", "connect"]


@dataclass
class Connected:
    """An open tunnel, the target's kernels, and its Jupyter's root_dir ("" if none)."""

    tunnel: Tunnel
    kernels: RemoteKernels
    root_dir: str


def connect(target: str, via: Iterable[str] | None, *, ssh_config: str | None = None,
            manager: TunnelManager | None = None, purpose: str = "kernels",
            ask: Ask | None = None) -> Connected:
    """Open a tunnel named ``HOST-PURPOSE-XXXXXX`` to ``target``; the caller closes it.
    A hop that asks (a one-time code) asks through ``ask`` (default: the running cell, else
    the terminal)."""
    from ..api import default_manager, make_spec
    from ..login.notebook import default_ask

    host = target.rsplit("@", 1)[-1].split(":", 1)[0]
    spec = make_spec(target, list(via or []) or None, ssh_config=ssh_config,
                     name=f"{host}-{purpose}-{secrets.token_hex(3)}")
    manager = manager or default_manager()
    tunnel = manager.open(dataclasses.replace(spec, jupyter=False), None,
                          ask or default_ask(manager.answer_timeout))
    try:
        try:
            servers = detect.discover(tunnel.run_remote, tunnel.chain[-1].alias)
        except RemoteJupyterNotFound:
            servers = []
        live = [s for s in servers if s.alive]
        newest = max(live, key=lambda s: s.mtime) if live else None
        backend = tunnel.backend
        assert backend is not None
        kernels = RemoteKernels(backend.run, tunnel.chain[-1].alias,
                                newest.pid if newest else None)
    except BaseException:
        tunnel.close()
        raise
    return Connected(tunnel, kernels, newest.root_dir if newest else "")
