"""Connections to a Unix socket on the last hop through an OpenSSH master (the resume
helper's socket).

The master's stdio forward (what the local listeners use) reaches only ``host:port``: asked
for a socket path, OpenSSH 9.2 refuses the channel.  So each remote socket gets one
streamlocal forward on the master, ``-O forward -L LOCAL:REMOTE``: ssh listens on a local
Unix socket in the master's 0700 control folder (0600 by its StreamLocalBindMask) and
carries each connection to it, in C, to the remote socket.  Connecting to that local
socket is a link.  The forward belongs to one master: after a reconnect it is asked of
the new master again; when the tunnel leaves a master that others still use it is
cancelled; its socket file is removed either way (ssh leaves it behind).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import subprocess
import threading
from pathlib import Path

from ..errors import ForwardingRefused, HopUnreachable
from . import openssh_master as om
from .openssh_files import MasterFiles

__all__ = ["MasterLinks"]

_REMOTE = re.compile(r"/[A-Za-z0-9_./+@-]+\Z")  # nothing ssh's -L parser would split


class MasterLinks:
    """The streamlocal forwards one backend asked of one master."""

    def __init__(self, files: MasterFiles, alias: str, label: str) -> None:
        self.files = files
        self.alias = alias
        self.label = label
        self._local: dict[str, Path] = {}  # remote socket path -> local socket path
        self._lock = threading.Lock()

    def connect(self, remote: str, timeout: float = 10.0) -> socket.socket:
        """A connected socket carried to the Unix socket ``remote`` on the last hop."""
        if not _REMOTE.match(remote):
            raise ValueError(f"not a plain absolute socket path: {remote!r}")
        local = self._forward(remote, timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(local))
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise HopUnreachable(f"the SSH connection to {self.label} does not carry "
                                 f"connections now: {exc}", hop=self.alias) from None
        return sock

    def _forward(self, remote: str, timeout: float) -> Path:
        with self._lock:
            local = self._local.get(remote)
            if local is not None:
                return local
            local = self.files.folder / f"{self.files.socket.name}.link-{secrets.token_hex(4)}"
            try:
                result = om.control(self.files, self.alias, "-O", "forward", "-L",
                                    f"{local}:{remote}", timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise HopUnreachable(f"cannot ask the SSH connection to {self.label} for a "
                                     f"forward: {exc}", hop=self.alias) from None
            if result.returncode != 0:
                with contextlib.suppress(OSError):
                    local.unlink()
                if "Control socket" in result.stderr or not self.files.socket.exists():
                    raise HopUnreachable(f"lost {self.label} while asking for a forward",
                                         hop=self.alias)
                raise ForwardingRefused(
                    f"the SSH connection to {self.label} refused to forward to {remote}: "
                    f"{result.stderr.strip() or 'ssh said no'}", hop=self.alias)
            self._local[remote] = local
            return local

    def cancel(self) -> None:
        """Cancel every forward (the master lives on for other tunnels) and remove the
        socket files."""
        with self._lock:
            forwards, self._local = dict(self._local), {}
        for remote, local in forwards.items():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                om.control(self.files, self.alias, "-O", "cancel", "-L", f"{local}:{remote}")
            with contextlib.suppress(OSError):
                local.unlink()

    def forget(self) -> None:
        """The master ended: remove the socket files it left."""
        with self._lock:
            forwards, self._local = dict(self._local), {}
        for local in forwards.values():
            with contextlib.suppress(OSError):
                local.unlink()
