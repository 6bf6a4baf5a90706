"""One tunnel's resumable streams: the helper on the last hop and the near end here.

The tunnel starts it once connected (:meth:`Resumer.start`), then hands it every
connection its local listeners accept (:meth:`Resumer.adopt`, set as the backend's
acceptor).  Links to the helper go through the backend (``Backend.unix_link``), so they
follow the tunnel through reconnects: after one the supervisor calls
:meth:`Resumer.reconnected`, which makes sure the helper still runs and has the near end
try its links at once.  :meth:`Resumer.close` ends the helper (its streams reset).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from ..backends import Backend
from ..errors import HopTimeout, RemotePortRefused, TunnelError
from . import launch
from .near import NearEnd, NearSettings, NearStatus

__all__ = ["ResumeLimits", "Resumer"]

log = logging.getLogger("jupyter_tunnel")


@dataclass(frozen=True)
class ResumeLimits:
    """Bytes held per connection and per tunnel, seconds an outage may last."""

    stream_limit: int = 16 * 2**20
    tunnel_limit: int = 256 * 2**20
    outage: float = 900.0
    keepalive: float = 10.0


class Resumer:
    """The resumable streams of one tunnel (see the module docstring)."""

    def __init__(self, backend: Backend, host: str, tunnel_id: str,
                 limits: ResumeLimits | None = None, *,
                 hops: list[dict[str, Any]] | None = None, ssh_config: str | None = None,
                 label: str | None = None) -> None:
        self.backend = backend
        self.host = host
        #: how errors name the target ("beast (beast.example.org:22)")
        self.label = label or host
        #: how to reach the helper again (cleanup): each hop's {host, user, port}, first
        #: hop first, and the ssh config they were resolved with (None: the default)
        self.hops = hops or [{"host": host, "user": None, "port": None}]
        self.ssh_config = ssh_config
        self.tunnel_id = tunnel_id
        self.limits = limits or ResumeLimits()
        self.helper: launch.HelperInfo | None = None
        self._python = ""
        self._settings = launch.new_settings(
            tunnel_id, stream_limit=self.limits.stream_limit,
            tunnel_limit=self.limits.tunnel_limit, outage=self.limits.outage,
            keepalive=self.limits.keepalive)
        self._near: NearEnd | None = None
        self._lock = threading.Lock()

    def _run(self, command: str, timeout: float, stdin: str | None) -> tuple[int, str, str]:
        return self.backend.run(command, timeout, stdin)

    def start(self, jupyter_pid: int | None) -> None:
        """Start the helper with the Python of ``jupyter_pid`` (else python3) and the near
        end; :class:`launch.ResumeUnavailable` when the last hop cannot run it."""
        try:
            self._python = launch.find_python(self._run, self.host, jupyter_pid)
            self.helper = launch.start_helper(self._run, self.host, self._python,
                                              self._settings)
        except TunnelError as exc:
            raise launch.ResumeUnavailable(
                f"the resume helper could not be started on {self.host}: {exc}") from None
        near = NearEnd(self._connect_link, self._settings.secret.encode(),
                       NearSettings(stream_limit=self.limits.stream_limit,
                                    tunnel_limit=self.limits.tunnel_limit,
                                    outage=self.limits.outage,
                                    keepalive=self.limits.keepalive))
        with self._lock:
            self._near = near
        near.start()

    def _connect_link(self) -> socket.socket:
        helper = self.helper
        if helper is None:
            raise OSError("the resume helper is not running")
        try:
            return self.backend.unix_link(helper.socket)
        except TunnelError as exc:  # down for now: the near end tries again
            raise OSError(str(exc)) from None

    def adopt(self, sock: socket.socket, host: str, port: int) -> None:
        """Carry an accepted local connection to ``host:port`` as the last hop sees it."""
        near = self._near
        if near is None:  # closed meanwhile: a reset, not an empty answer that looks complete
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        near.adopt(sock, target)

    def listen(self, bind: str, port: int, host: str, host_port: int) -> int:
        """A reverse forward the helper holds: it listens on ``bind:port`` on the target
        (0: a free port) and its connections reach ``host:host_port`` here, resumable;
        the port bound.  RemotePortRefused when the target will not listen there."""
        near = self._near
        if near is None:
            raise TunnelError("the resume helper is not running")
        try:
            return near.listen(bind, port, host, host_port)
        except TimeoutError as exc:
            raise HopTimeout(f"{self.label}: {exc}", hop=self.host) from None
        except OSError as exc:
            where = f"{bind}:{port}" if port else bind
            raise RemotePortRefused(
                f"{self.label} refused to listen on {where} for --reverse ({exc}). Choose "
                f"another remote port, or free this one on {self.host}", hop=self.host
            ) from None

    def reconnected(self) -> None:
        """The SSH connection is back: the helper runs (a new one if it ended meanwhile:
        the streams it held are then reset) and the links are tried at once."""
        near = self._near
        if near is None:
            return
        try:
            helper = launch.start_helper(self._run, self.host, self._python, self._settings)
        except (TunnelError, launch.ResumeUnavailable) as exc:
            log.info("resume: the helper on %s: %s", self.host, exc)
        else:
            if not helper.existing:
                log.info("resume: the helper on %s had ended; streams it held are lost",
                         self.host)
            self.helper = helper
        near.poke()

    def status(self) -> NearStatus:
        """Streams open and held, bytes buffered, whether the helper is reached."""
        near = self._near
        return near.status() if near is not None else NearStatus()

    def summary(self) -> dict[str, Any]:
        """The status as shown in the tunnel's JSON."""
        status = self.status()
        helper = self.helper
        return {"connections": status.streams_open, "held": status.streams_held,
                "buffered": status.bytes_buffered, "helper_reached": status.link_up,
                "helper_pid": helper.pid if helper else None,
                # what cleanup needs to prove and end it on the target if this process dies
                "helper": {"id": self.tunnel_id, "pid": helper.pid, "started": helper.started,
                           "socket": helper.socket, "host": self.host, "hops": self.hops,
                           "ssh_config": self.ssh_config, "outage": self.limits.outage}
                if helper else None}

    def close(self, timeout: float = 5.0) -> None:
        """Reset what is held and end the helper; idempotent."""
        with self._lock:
            near, self._near = self._near, None
        if near is not None:
            near.close(timeout)
