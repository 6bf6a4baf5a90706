"""Who listens on a local TCP port (from /proc): to say who holds a port, never to kill it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import procinfo

_LISTEN = "0A"


@dataclass(frozen=True)
class Holder:
    """A process listening on a port."""

    pid: int
    cmdline: tuple[str, ...]

    def describe(self) -> str:
        """``pid 123 (python3 -m http.server 8000)``."""
        command = " ".join(self.cmdline)
        if len(command) > 80:
            command = command[:77] + "..."
        return f"pid {self.pid} ({command})" if command else f"pid {self.pid}"


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def holders(port: int) -> list[Holder]:
    """The processes of this network namespace listening on TCP ``port`` that we may see."""
    inodes = _listening_inodes(port)
    found: list[Holder] = []
    if not inodes:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"{entry.path}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        pid = int(entry.name)
                        found.append(Holder(pid, tuple(procinfo.cmdline(pid) or ())))
                        break
    return found


def describe_holders(port: int) -> str:
    """`` (held by pid 123 (…))`` where the system tells, else an empty string."""
    try:
        found = holders(port)
    except OSError:
        return ""
    if not found:
        return ""
    return " (held by " + ", ".join(h.describe() for h in found) + ")"
