"""Durations and sizes for people, as every front end shows them."""

from __future__ import annotations

import os
from urllib.parse import urlsplit


def human_bytes(n: object) -> str:
    """``1.5 MB``: bytes for people (decimal units)."""
    size = float(n) if isinstance(n, (int, float)) else 0.0
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    """``2h 03m``, ``4m 09s`` or ``7 s``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def resume_text(info: object) -> str:
    """What a tunnel's resumable connections hold, in words: "2 connections held, 2.1 MB
    buffered" while the helper cannot be reached (an outage), else that they resume; ""
    when the tunnel does not resume.  (A new connection waits a moment for its link: held
    too, but not worth a word while the helper is reached.)"""
    if not isinstance(info, dict):
        return ""
    held = int(info.get("held") or 0)
    if held and not info.get("helper_reached"):
        return (f"{held} connection{'s' if held != 1 else ''} held, "
                f"{human_bytes(info.get('buffered', 0))} buffered")
    return "connections resume after an outage"


def under_hub() -> bool:
    """Whether this process runs under JupyterHub: a kernel started by a hub's single-user
    server inherits ``JUPYTERHUB_SERVICE_PREFIX``. The browser is then usually on another
    machine, where a tunnel's ``http://127.0.0.1:PORT/`` leads nowhere."""
    return bool(os.environ.get("JUPYTERHUB_SERVICE_PREFIX"))


def hub_note(hops: list[str], url: str) -> str:
    """What replaces a tunnel's link under a hub: where it listens, as text (no scheme, so
    no frontend turns it into a link; no query, so no token), and what to use instead."""
    parts = urlsplit(url)
    where = f"{parts.netloc}{parts.path}".rstrip("/")
    target = hops[-1] if hops else "the target"
    via = "".join(f" via {hop}" for hop in hops[:-1])
    return (f"{target}'s JupyterLab listens on the hub's machine ({where}), not reachable "
            f"from this browser: use {target}'s kernels here instead "
            f"(%tunnel kernels install {target}{via})")
