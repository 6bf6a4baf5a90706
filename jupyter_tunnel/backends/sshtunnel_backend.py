"""The default backend: hops chained in one process, forwards served by sshtunnel.

sshtunnel's ``SSHTunnelForwarder`` is given the last hop's transport ready-made
(host key checked, authenticated, riding the previous hop's channel), so its own
connecting code, which accepts any host key and logs errors instead of raising
them, never runs.  Its listener is bound to 127.0.0.1 with a backlog of 128, and
connections are relayed by our own loop: no polling, TCP_NODELAY, half-close
passed through.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from typing import Any

import paramiko
import sshtunnel

from ..errors import HopUnreachable, PortInUse, TunnelError
from ..sshconfig import ResolvedHop
from .base import DeadCallback, NoticeCallback, ProgressCallback
from .chain import HopChain

log = logging.getLogger("jupyter_tunnel")
_CHUNK = 65536


class Counters:
    """Traffic counters shared by the handler threads of one backend."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0
        self.connections_total = 0

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "connections": self.connections,
                "connections_total": self.connections_total,
            }


def relay(sock: socket.socket, chan: Any, counters: Counters) -> None:
    """Copy both ways until both sides are done; EOF on one side is passed on as a half-close."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "local")
    sel.register(chan, selectors.EVENT_READ, "remote")
    open_sides = 2
    try:
        while open_sides:
            for key, _ in sel.select():
                if key.data == "local":
                    data = sock.recv(_CHUNK)
                    if data:
                        chan.sendall(data)
                        with counters.lock:
                            counters.bytes_out += len(data)
                    else:
                        sel.unregister(sock)
                        open_sides -= 1
                        chan.shutdown_write()
                else:
                    data = chan.recv(_CHUNK)
                    if data:
                        sock.sendall(data)
                        with counters.lock:
                            counters.bytes_in += len(data)
                    else:
                        sel.unregister(chan)
                        open_sides -= 1
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)
    finally:
        sel.close()


class _Handler(sshtunnel._ForwardHandler):  # type: ignore[misc]
    counters: Counters

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            chan = self.ssh_transport.open_channel(
                "direct-tcpip", self.remote_address, sock.getpeername(), timeout=10)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("forward to %s refused: %s", self.remote_address, exc)
            sock.close()
            return
        with self.counters.lock:
            self.counters.connections += 1
            self.counters.connections_total += 1
        try:
            relay(sock, chan, self.counters)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("connection through %s ended: %s", self.remote_address, exc)
        finally:
            with self.counters.lock:
                self.counters.connections -= 1
            chan.close()
            sock.close()


class _Server(sshtunnel._ThreadingForwardServer):  # type: ignore[misc]
    request_queue_size = 128
    allow_reuse_address = True  # lets the same port be bound again right after a close

    def server_bind(self) -> None:
        try:
            super().server_bind()
        except OSError as exc:
            host, port = self.server_address
            raise PortInUse.from_bind_error(host, port, exc) from None


class _Forwarder(sshtunnel.SSHTunnelForwarder):  # type: ignore[misc]
    counters: Counters

    def _connect_to_gateway(self) -> None:
        # sshtunnel would log in on its own, straight to the host and with no host key
        # check; it is only reached if our transport dropped just before start().
        raise HopUnreachable("the SSH connection was lost while the forward was being set up")

    def _get_transport(self) -> Any:
        raise HopUnreachable("the SSH connection was lost while the forward was being set up")

    def _make_ssh_forward_handler_class(self, remote_address_: tuple[str, int]) -> type:
        counters = self.counters

        class Handler(_Handler):
            remote_address = remote_address_
            ssh_transport = self._transport
            logger = self.logger

        Handler.counters = counters
        return Handler

    def _make_ssh_forward_server_class(self, remote_address_: tuple[str, int]) -> type:
        return _Server


class SSHTunnelBackend:
    """Hops in one process (:class:`HopChain`) and sshtunnel forwarders on the last one."""

    def __init__(self) -> None:
        self.chain = HopChain()
        self.counters = Counters()
        self._forwarders: list[_Forwarder] = []
        self._lock = threading.Lock()

    def connect(self, chain: list[ResolvedHop], progress: ProgressCallback | None = None,
                timeout: float = 10.0, notice: NoticeCallback | None = None) -> None:
        """Connect every hop; see :meth:`HopChain.connect`."""
        self.chain.connect(chain, progress, timeout, notice)

    def keepalive(self, interval: int, count_max: int, on_dead: DeadCallback) -> None:
        """Watch every hop with keepalives; see :meth:`HopChain.start_keepalive`."""
        self.chain.start_keepalive(interval, count_max, on_dead)

    def run(self, command: str, timeout: float = 30.0, stdin: str | None = None
            ) -> tuple[int, str, str]:
        """Run a command on the last hop."""
        return self.chain.exec(command, timeout, stdin)

    def forward_local(self, local_port: int, remote_host: str, remote_port: int) -> int:
        """Forward 127.0.0.1:local_port to remote_host:remote_port as the last hop sees it."""
        if not self.chain.alive():
            raise HopUnreachable("the SSH connection is down; cannot add a forward")
        transport = self.chain.transports[-1]
        hop = self.chain.hops[-1]
        logger = logging.getLogger("jupyter_tunnel.sshtunnel")
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        fwd = _Forwarder(
            (hop.hostname, hop.port),
            ssh_config_file=None,
            ssh_username=hop.user,
            ssh_pkey=_PlaceholderKey(),
            allow_agent=False,
            host_pkey_directories=[],
            local_bind_address=("127.0.0.1", local_port),
            remote_bind_address=(remote_host, remote_port),
            mute_exceptions=False,
            logger=logger,
            set_keepalive=0,
        )
        fwd.counters = self.counters
        fwd._transport = transport  # already connected: sshtunnel skips its own login
        try:
            fwd.start()
        except TunnelError:
            _detach(fwd)
            raise
        except sshtunnel.BaseSSHTunnelForwarderError as exc:
            _detach(fwd)
            raise TunnelError(f"cannot start the forward to {remote_host}:{remote_port} on "
                              f"{hop.label}: {exc}", hop=hop.alias) from None
        with self._lock:
            self._forwarders.append(fwd)
        port: int = fwd.local_bind_port
        return port

    def alive(self) -> bool:
        """Whether every hop is connected."""
        return self.chain.alive()

    def dead_hop(self) -> ResolvedHop | None:
        """The first hop whose connection is down."""
        return self.chain.dead_hop()

    def stats(self) -> dict[str, int]:
        """Traffic counters."""
        return self.counters.snapshot()

    def close(self) -> None:
        """Stop the listeners, then close the hops last first."""
        with self._lock:
            forwarders, self._forwarders = self._forwarders, []
        for fwd in forwarders:
            for srv in fwd._server_list:
                with contextlib.suppress(Exception):
                    srv.shutdown()
            _detach(fwd)
        self.chain.close()


def _detach(fwd: _Forwarder) -> None:
    """Close its listeners and forget the shared transport (sshtunnel's ``__del__`` would
    close it)."""
    for srv in fwd._server_list:
        with contextlib.suppress(Exception):
            srv.server_close()
    fwd._server_list = []
    fwd.is_alive = False
    fwd.__dict__.pop("_transport", None)


class _PlaceholderKey(paramiko.PKey):  # type: ignore[misc]
    """Satisfies sshtunnel's check that some key exists; never offered to a server."""

    def __init__(self) -> None:
        pass

    def get_fingerprint(self) -> bytes:
        return b"jupyter_tunnel-placeholder"
