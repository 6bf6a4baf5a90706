"""The JupyterLabs that a test's launches started on beast (with a served base URL): find
them by their runtime files, end them.  Closing a tunnel leaves them running, as
``--launch`` documents, so each test that launches ends its own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jupyter_tunnel.sandbox import Sandbox


def launched_servers(net: Sandbox, base_url: str) -> list[dict[str, Any]]:
    """The runtime records of the live Jupyter servers on beast with this base URL."""
    runtime = net.home("beast") / ".local" / "share" / "jupyter" / "runtime"
    found = []
    for file in runtime.glob("jpserver-*.json"):
        try:
            info = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if info.get("base_url") == base_url and Path(f"/proc/{info['pid']}").exists():
            found.append(info)
    return found


def launched_pids(net: Sandbox, base_url: str) -> list[int]:
    """The pids of the live Jupyter servers on beast with this base URL."""
    return [int(info["pid"]) for info in launched_servers(net, base_url)]


def end_launched(net: Sandbox, base_url: str, timeout: float = 15) -> bool:
    """Stop those servers; whether they are gone within ``timeout`` seconds."""
    for pid in launched_pids(net, base_url):
        net.run_in("beast", ["kill", str(pid)])
    deadline = time.monotonic() + timeout
    while launched_pids(net, base_url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
