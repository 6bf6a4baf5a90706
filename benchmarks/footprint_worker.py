"""One backend of ``footprint.py``, in a process of its own: a user's Jupyter server's share.

    python benchmarks/footprint_worker.py CONFIG_JSON

CONFIG_JSON: {"backend": "openssh"|"sshtunnel", "ssh_config", "kernel_name"}.  The
environment (set by footprint.py) holds JUPYTER_RUNTIME_DIR, JUPYTER_DATA_DIR (with the
kernelspec), JUPYTER_TUNNEL_BACKEND and the run's marker.  It imports what a Jupyter server
with jupyter_tunnel loaded has imported, makes an in-process TunnelManager, prints
``{"step": "ready", ...}`` and then does one step per line read on stdin, printing one JSON
line after each:

1. ``tunnel``: ``TunnelManager.open(beast via unicorn)``;
2. ``tunnel``: a second one to the same hosts;
3. ``kernel``: a remote kernel (jupyter_client's KernelManager on the kernelspec, through
   the ``jupyter-tunnel`` provisioner) until its first kernel_info reply;
4. ``kernel``: a second one.

An empty line (or stdin closed) shuts the kernels down, closes the tunnels and exits.
Everything it started is stopped on the way out, also after an error or SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# What a user's Jupyter server with the extension has imported before any tunnel: the
# baseline is taken after these (the backend's own modules are imported at the first open)
import jupyter_client.manager
from kernel_worker import first_kernel_info

import jupyter_tunnel
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.spec import build_spec


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def emit(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)


class User:
    """One user's tunnels and remote kernels."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.manager = TunnelManager(ssh_config=cfg["ssh_config"], backend=cfg["backend"],
                                     owner="server")
        self.tunnels: list[Any] = []
        self.kernels: list[tuple[Any, Any]] = []  # (KernelManager, client)

    def tunnel(self) -> dict[str, Any]:
        t0 = time.monotonic()
        tunnel = self.manager.open(build_spec("beast via unicorn"))
        took = time.monotonic() - t0
        self.tunnels.append(tunnel)
        record = tunnel.to_dict()
        return {"open_s": took, "backend": type(tunnel.backend).__name__,
                "resume": record.get("resume") is not None,
                "children": [c["pid"] for c in record.get("children") or []]}

    def kernel(self) -> dict[str, Any]:
        km = jupyter_client.manager.KernelManager(kernel_name=self.cfg["kernel_name"])
        t0 = time.monotonic()
        km.start_kernel()
        kc = km.client()
        self.kernels.append((km, kc))
        kc.start_channels()
        ready = first_kernel_info(kc) - t0
        provisioner = km.provisioner
        tunnel = getattr(provisioner, "_tunnel", None)
        return {"ready_s": ready, "provisioner": type(provisioner).__name__,
                "backend": type(tunnel.backend).__name__ if tunnel is not None else None}

    def close(self) -> list[str]:
        problems = []
        for km, kc in reversed(self.kernels):
            try:
                kc.stop_channels()
                km.shutdown_kernel(now=False)
            except Exception as exc:  # the others must go too
                problems.append(f"kernel shutdown: {type(exc).__name__}: {exc}")
                try:
                    km.shutdown_kernel(now=True)
                except Exception as again:
                    problems.append(f"kernel kill: {type(again).__name__}: {again}")
        self.kernels.clear()
        for tunnel in reversed(self.tunnels):
            try:
                tunnel.close()
            except Exception as exc:
                problems.append(f"tunnel close: {type(exc).__name__}: {exc}")
        self.tunnels.clear()
        return problems


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    cfg = json.loads(sys.argv[1])
    user = User(cfg)
    steps = [user.tunnel, user.tunnel, user.kernel, user.kernel]
    problems: list[str] = []
    try:
        emit({"step": "ready", "pid": os.getpid(), "package": jupyter_tunnel.__file__})
        for number, step in enumerate(steps, 1):
            line = sys.stdin.readline()
            if not line.strip():
                break
            result = step()
            say(f"  {cfg['backend']}: step {number} ({step.__name__}) done: {result}")
            emit({"step": number, **result})
        sys.stdin.readline()  # the measurements of the last step are taken meanwhile
    finally:
        problems = user.close()
    emit({"step": "closed", "problems": problems})
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
