"""The remote helper program of resumable streams, and how the laptop starts it.

The program is our own modules joined into one source (``frames``, ``replay``,
``helper_start``, ``helper_loop``, ``helper_reverse``, ``helper_main``; stdlib only,
Python 3.8+), run by the Python of the last hop.  How it starts, with no input in its command line:

1. The laptop runs ``command()`` over SSH: ``python3 -I -c "import sys;exec(sys.stdin.
   buffer.readline())"``, fixed text that every login shell parses alike.
2. It writes ``start_input(settings)`` to its stdin: a fixed loader line (it names only
   the program's length), the program, then one JSON line of settings (tunnel id,
   secret, limits), and closes stdin.
3. The program answers one JSON line on stdout, read by ``parse_reply``: the Unix socket
   to connect to and the helper's identity (pid, start time), with ``existing`` true
   when a helper of this id was already running (the reattach after a reconnect);
   or ``{"error": ...}``.

The helper lives in ``$XDG_RUNTIME_DIR/jupyter_tunnel/resume`` (that runtime dir must be
the user's own and 0700), else ``~/.cache/jupyter_tunnel/resume``; the folder is 0700,
refused if another user could change it.  There it keeps ``<id>.sock`` (0600, the only
listener) and ``<id>.json`` (0600: pid, started, cmdline, socket, version), both removed
when it ends: after a control channel's RESET(SHUTDOWN), on SIGTERM, or once no control
channel has been open for the outage limit (the laptop keeps one open while it lives,
sending an ACK at least every ``keepalive`` seconds; the helper echoes it, and drops a
control channel silent for three times that).  See ``helper_main`` for the channels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .helper_loop import CONTROL_TARGET

__all__ = ["CONTROL_TARGET", "HelperSettings", "command", "parse_reply", "program",
           "start_input"]

#: joined in this order; each drops its ``from __future__`` and relative imports
_MODULES = tuple(f"resume/{name}" for name in (
    "frames.py", "replay.py", "helper_start.py", "helper_loop.py", "helper_reverse.py",
    "helper_main.py"))
_RELATIVE = re.compile(r"^from \.+[\w.]* import (?:\([^)]*\)|[^\n]*)\n", re.MULTILINE)
_FUTURE = "from __future__ import annotations\n"
_PYTHON = re.compile(r"[A-Za-z0-9_./+-]+\Z")
LOADER = "import sys;exec(sys.stdin.buffer.readline())"


def join_modules(modules: tuple[str, ...], entry: str) -> str:
    """One source of our ``modules`` (paths under the package, e.g. ``resume/frames.py``;
    each without its ``from __future__`` and relative imports), then the ``entry``
    statement: a program to send to the last hop."""
    here = Path(__file__).parent.parent
    parts = [_FUTURE]
    for name in modules:
        text = (here / name).read_text(encoding="utf-8")
        if _FUTURE not in text:
            raise RuntimeError(f"{name} must start with {_FUTURE.strip()!r}")
        parts.append(f"# ---- {name}\n" + _RELATIVE.sub("", text.replace(_FUTURE, "")))
    parts.append(f"\n{entry}\n")
    return "\n".join(parts)


def stdin_for(source: str, name: str, tail: str) -> bytes:
    """A program's stdin after the fixed ``LOADER`` line: the line that reads and runs
    ``source`` (named ``name`` in tracebacks), the source, then ``tail`` (one JSON line)."""
    raw = source.encode("utf-8")
    loader = f"import sys;exec(compile(sys.stdin.buffer.read({len(raw)}),{name!r},'exec'))\n"
    return loader.encode() + raw + tail.encode() + b"\n"


@cache
def program() -> str:
    """The helper program's full source."""
    return join_modules(_MODULES, "main_start(serve)")


def command(python: str = "python3", *, isolated: bool = True) -> str:
    """The command line that starts the helper, or (``isolated`` False: the user's
    site-packages and PYTHONPATH count) another program of ours such as the remote kernels'
    nanny; nothing from input but a checked path."""
    if not _PYTHON.match(python):
        raise ValueError(f"not a plain program name or path: {python!r}")
    return f'{python}{" -I" if isolated else ""} -c "{LOADER}"'


@dataclass(frozen=True)
class HelperSettings:
    """What the helper is told on stdin; limits in bytes, the outage in seconds."""

    tunnel_id: str
    secret: str = field(repr=False)
    stream_limit: int = 16 * 2**20
    tunnel_limit: int = 256 * 2**20
    outage: float = 900.0
    keepalive: float = 10.0  # 0: control channels are never dropped for silence

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps({"id": self.tunnel_id, "secret": self.secret,
                           "stream_limit": self.stream_limit, "tunnel_limit": self.tunnel_limit,
                           "outage": self.outage, "keepalive": self.keepalive})


def start_input(settings: HelperSettings) -> bytes:
    """Everything the helper's stdin receives: loader line, program, settings line."""
    return stdin_for(program(), "jupyter-tunnel-resume", settings.to_json())


def parse_reply(stdout: str) -> dict[str, Any]:
    """The helper's answer: ``{"socket", "pid", "started", "version", "existing"}``.

    Raises ValueError with the helper's words when it did not start.
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ValueError("the resume helper gave no answer")
    if "error" in answer:
        raise ValueError(f"the resume helper did not start: {answer['error']}")
    if not isinstance(answer.get("socket"), str) or not isinstance(answer.get("pid"), int):
        raise ValueError("the resume helper's answer lacks its socket or pid")
    return answer
