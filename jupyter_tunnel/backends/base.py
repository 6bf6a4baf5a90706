"""The small interface every backend implements."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from ..login.questions import Ask
from ..sshconfig import ResolvedHop

#: called with the index of the hop being connected and the hop
ProgressCallback = Callable[[int, ResolvedHop], None]
#: called with the hop that went down, a message saying so, and whether it timed out
DeadCallback = Callable[[ResolvedHop, str, bool], None]
#: called with something the user should know, e.g. a host key added to known_hosts
NoticeCallback = Callable[[str], None]
#: takes over an accepted local connection bound for ``host:port`` (as the last hop sees it)
Acceptor = Callable[[socket.socket, str, int], None]


class Backend(Protocol):
    """Connect a chain of hops, forward ports through it, run commands on its end.

    Listeners outlive the SSH connection: after a loss, ``connect`` is called again and
    the same local ports carry on.
    """

    def connect(self, chain: list[ResolvedHop], progress: ProgressCallback | None = None,
                timeout: float = 10.0, notice: NoticeCallback | None = None,
                ask: Ask | None = None) -> None:
        """Connect every hop in order (again, after a loss); raise a :class:`TunnelError`
        naming the failing hop.  A hop that asks a question (a one-time code, a password,
        a key's passphrase) is answered through ``ask``; without it such a login fails
        with :class:`AnswerNeeded` naming the hop."""

    def disconnect(self) -> None:
        """Drop the SSH connection but keep every listener bound."""

    def keepalive(self, interval: int, count_max: int, on_dead: DeadCallback) -> None:
        """Check every hop of the current connection with keepalives (ServerAlive* of its
        config, else these values); call ``on_dead(hop, message, timed_out)`` once, when one
        stops answering."""

    def run(self, command: str, timeout: float = 30.0, stdin: str | None = None
            ) -> tuple[int, str, str]:
        """Run ``command`` on the last hop with ``stdin``; return status, stdout, stderr."""

    def set_acceptor(self, acceptor: Acceptor | None) -> None:
        """Hand each connection the local forwards accept to ``acceptor(sock, host, port)``
        (``host:port`` as the last hop sees it) instead of carrying it; None: carry again."""

    def unix_link(self, path: str, timeout: float = 10.0) -> socket.socket:
        """A connected socket carried to the Unix socket ``path`` on the last hop (the
        resume helper's); HopUnreachable while the connection is down, ForwardingRefused
        when the last hop will not connect there."""

    def forward_local(self, local_port: int, remote_host: str, remote_port: int) -> int:
        """Listen on 127.0.0.1:``local_port`` (0: any) and forward to the last hop's view
        of ``remote_host:remote_port``; return the port bound."""

    def retarget(self, local_port: int, remote_host: str, remote_port: int) -> None:
        """Send new connections of an existing local forward somewhere else."""

    def forward_remote(self, remote_port: int, local_host: str, local_port: int,
                       bind: str = "127.0.0.1") -> int:
        """Have the last hop listen on ``bind:remote_port`` (0: any) and forward to
        ``local_host:local_port`` here; return the remote port bound."""

    def restore_remote(self) -> None:
        """Request every remote forward again after a reconnect (same remote ports)."""

    def alive(self) -> bool:
        """Whether every hop's connection is up."""

    def dead_hop(self) -> ResolvedHop | None:
        """The first hop whose connection is down, if any."""

    def stats(self) -> dict[str, int]:
        """Counters: bytes_in, bytes_out, connections (open now), connections_total."""

    def children(self) -> list[dict[str, Any]]:
        """Processes the backend started, as ``{pid, started, cmdline}`` (for cleanup)."""

    def close(self) -> None:
        """Stop listening and close every hop; idempotent."""
