"""Starting the resume helper on the last hop, with the Python that runs the remote Jupyter.

Both steps go through the backend's ``run`` (an exec channel, or a session through the
OpenSSH master): the commands are fixed text, the only argument a pid we parsed as an
integer, and the helper program with its settings travels on stdin (see ``remote``).
Any failure is a :class:`ResumeUnavailable` carrying the words to show once: the tunnel
then forwards without resuming, as before.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from . import remote

__all__ = ["FIND_PYTHON_SCRIPT", "HelperInfo", "ResumeUnavailable", "find_python",
           "new_settings", "start_helper"]

#: runs a command on the last hop: (command, timeout, stdin) -> (status, stdout, stderr)
RunCommand = Callable[[str, float, "str | None"], tuple[int, str, str]]

#: the only command line of the search; the script goes on its stdin
REMOTE_SHELL = "sh -s"

# The Python of process $1 (the remote Jupyter) if it is ours and a python, else python3
# on the PATH; it must be 3.8 or later (the helper's syntax).  Prints the path; exit 2:
# too old, 3: none.
FIND_PYTHON_SCRIPT = r"""
p=
if [ -n "$1" ] && [ -O "/proc/$1" ]; then
  e=$(readlink "/proc/$1/exe" 2>/dev/null)
  case "$e" in */python*) [ -x "$e" ] && p=$e;; esac
fi
[ -n "$p" ] || p=$(command -v python3 2>/dev/null)
[ -n "$p" ] || exit 3
"$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' 2>/dev/null || exit 2
printf '%s\n' "$p"
"""

_PATH = re.compile(r"/[A-Za-z0-9_./+-]*\Z")


class ResumeUnavailable(Exception):
    """The helper cannot run on the last hop; the message says why, for one notice."""


@dataclass(frozen=True)
class HelperInfo:
    """A running helper: where to connect, and its identity on the remote host."""

    socket: str
    pid: int
    started: int | None
    existing: bool  # it was already running (a reattach after a reconnect)


def find_python(run: RunCommand, host: str, pid: int | None, timeout: float = 30.0) -> str:
    """The Python to start the helper with: the one running ``pid`` (the remote Jupyter)
    if it is ours, else ``python3`` on the PATH of a non-interactive session."""
    if pid is not None and (not isinstance(pid, int) or pid <= 0):
        raise ValueError(f"not a process id: {pid!r}")
    command = REMOTE_SHELL if pid is None else f"{REMOTE_SHELL} {pid}"
    status, out, _ = run(command, timeout, FIND_PYTHON_SCRIPT)
    path = out.strip().splitlines()[-1] if out.strip() else ""
    if status == 2:
        raise ResumeUnavailable(f"the Python on {host} is older than 3.8")
    if status != 0 or not _PATH.match(path):
        raise ResumeUnavailable(f"no python3 found on {host}")
    return path


def new_settings(tunnel_id: str, *, stream_limit: int, tunnel_limit: int, outage: float,
                 keepalive: float) -> remote.HelperSettings:
    """Settings for a new helper, with a fresh secret (never shown, never in argv)."""
    return remote.HelperSettings(tunnel_id, secrets.token_urlsafe(32), stream_limit,
                                 tunnel_limit, outage, keepalive)


def start_helper(run: RunCommand, host: str, python: str, settings: remote.HelperSettings,
                 timeout: float = 30.0) -> HelperInfo:
    """Start the helper of ``settings.tunnel_id`` (or find it running) on the last hop."""
    stdin = remote.start_input(settings).decode("utf-8")
    _, out, err = run(remote.command(python), timeout, stdin)
    try:
        answer = remote.parse_reply(out)
    except ValueError as exc:
        last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
        detail = f" ({last})" if last and "error" not in out else ""
        raise ResumeUnavailable(f"{exc} on {host}{detail}") from None
    started = answer.get("started")
    return HelperInfo(answer["socket"], answer["pid"],
                      started if isinstance(started, int) else None,
                      bool(answer.get("existing")))
