"""sshtunnel's listeners fitted to :class:`~.sshtunnel_backend.SSHTunnelBackend`.

sshtunnel's ``SSHTunnelForwarder`` provides the listeners (bound to 127.0.0.1, a backlog
of 128, address reuse); it never logs in itself (its own connecting code accepts any host
key and logs errors instead of raising them): each accepted connection asks the backend
for a channel and is relayed by it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko
import sshtunnel

from ..errors import HopUnreachable, PortInUse, TunnelError
from ..peers import may_use

if TYPE_CHECKING:
    from .sshtunnel_backend import SSHTunnelBackend

__all__ = ["Forwarder", "PlaceholderKey", "Route", "Target", "detach"]

log = logging.getLogger("jupyter_tunnel")


@dataclass(frozen=True)
class Route:
    """Where a local listener's connections go, as the last hop sees it."""

    host: str
    port: int


class Target:
    """A listener's current route: :meth:`SSHTunnelBackend.retarget` swaps in a new
    :class:`Route` whole, so a connection never sees the host of one and the port of
    another."""

    def __init__(self, route: Route) -> None:
        self.route = route


class _Handler(sshtunnel._ForwardHandler):  # type: ignore[misc]
    backend: SSHTunnelBackend
    target: Target

    def handle(self) -> None:
        sock: socket.socket = self.request
        route = self.target.route
        if not may_use(sock):
            return  # socketserver closes it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        acceptor = self.backend.acceptor
        if acceptor is not None:
            # socketserver shuts down and closes the request after handle(): detach the
            # connection from its socket object first, so that only the acceptor ends it
            taken = socket.socket(fileno=sock.detach())
            try:
                acceptor(taken, route.host, route.port)
            except Exception:
                log.exception("the acceptor failed")
                taken.close()
            return
        try:
            chan = self.backend.open_channel((route.host, route.port), sock.getpeername())
        except (TunnelError, paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("forward to %s:%s refused: %s", route.host, route.port, exc)
            sock.close()
            return
        self.backend.relay_connection(sock, chan, True, f"connection to {route.host}:{route.port}")


class _Server(sshtunnel._ThreadingForwardServer):  # type: ignore[misc]
    request_queue_size = 128
    allow_reuse_address = True  # lets the same port be bound again right after a close

    def server_bind(self) -> None:
        try:
            super().server_bind()
        except OSError as exc:
            host, port = self.server_address
            raise PortInUse.from_bind_error(host, port, exc) from None


class Forwarder(sshtunnel.SSHTunnelForwarder):  # type: ignore[misc]
    backend: SSHTunnelBackend
    target: Target

    def _connect_to_gateway(self) -> None:
        # sshtunnel would log in on its own, straight to the host and with no host key
        # check; it is only reached if our transport dropped just before start().
        raise HopUnreachable("the SSH connection was lost while the forward was being set up")

    def _get_transport(self) -> Any:
        raise HopUnreachable("the SSH connection was lost while the forward was being set up")

    def _make_ssh_forward_handler_class(self, remote_address_: tuple[str, int]) -> type:
        class Handler(_Handler):
            remote_address = remote_address_
            logger = self.logger

        Handler.backend = self.backend
        Handler.target = self.target
        return Handler

    def _make_ssh_forward_server_class(self, remote_address_: tuple[str, int]) -> type:
        return _Server


def detach(fwd: Forwarder) -> None:
    """Close its listeners and forget the shared transport (sshtunnel's ``__del__`` would
    close it)."""
    for srv in fwd._server_list:
        with contextlib.suppress(Exception):
            srv.server_close()
    fwd._server_list = []
    fwd.is_alive = False
    fwd.__dict__.pop("_transport", None)


class PlaceholderKey(paramiko.PKey):  # type: ignore[misc]
    """Satisfies sshtunnel's check that some key exists; never offered to a server."""

    def __init__(self) -> None:
        pass

    def get_fingerprint(self) -> bytes:
        return b"jupyter_tunnel-placeholder"
