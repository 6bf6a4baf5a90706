"""Holds jupyter_tunnel tunnels open for the benchmark, through the Python API.

  holder.py SSH_CONFIG BACKEND COUNT FORWARD_PORT [resume]

Opens COUNT tunnels ``beast via unicorn`` (each with an extra forward to beast's
127.0.0.1:FORWARD_PORT, when not 0), one after the other, and prints one JSON line:
this process's pid, the jupyter_tunnel package it imported, the seconds each open took
(open to api/status verified), and each tunnel's URL, ports and the processes its backend
started.  With ``resume`` the tunnels carry resumable connections
(``TunnelManager.resume``): each must have its helper running on beast (else exit 1),
whose pid and start time are printed too.  Closes them all and exits when stdin closes
(exit 1 if a close failed), or on SIGTERM/SIGHUP (exit 128+signal, after closing them).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import jupyter_tunnel
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.spec import build_spec


def _exit(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP: close the tunnels on the way out (finally), then exit 128+signum."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(128 + signum)


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)
    config, backend, count, forward = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4])
    resume = sys.argv[5:] == ["resume"]
    manager = TunnelManager(ssh_config=config, backend=backend, owner="python", resume=resume)
    forwards = [f"0:127.0.0.1:{forward}"] if forward else []
    tunnels: list[Any] = []
    times = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            tunnels.append(manager.open(build_spec("beast via unicorn", forwards=forwards)))
            times.append(time.perf_counter() - t0)
        info = []
        for tunnel in tunnels:
            record = tunnel.to_dict()
            helper = (record.get("resume") or {}).get("helper")
            if resume and not helper:  # it fell back to plain forwards: not what is measured
                raise SystemExit(f"holder: no resume helper: {tunnel.notices}")
            info.append({"url": record["url"], "local_port": record["local_port"],
                         "forward_port": record["forwards"][0]["local_port"] if forwards
                         else None,
                         "children": [c["pid"] for c in record["children"]],
                         "helper": [helper["pid"], helper["started"]] if helper else None})
        print(json.dumps({"pid": os.getpid(), "package": jupyter_tunnel.__file__,
                          "open_s": times, "tunnels": info}), flush=True)
        sys.stdin.read()
    finally:
        failed = 0
        for tunnel in tunnels:
            try:
                tunnel.close()
            except Exception as exc:  # close the others, then fail
                print(f"holder: closing {tunnel}: {exc}", file=sys.stderr)
                failed += 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
