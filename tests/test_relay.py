"""The in-process backend's relay between a local socket and an SSH channel: half-closes
passed on, a channel that ends without EOF resets the local connection (a cut download
must not look complete), and the backend ends its relays when it drops the connection."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest
from test_backend_tuning import SSHPair, stream_until_closed

from jupyter_tunnel.backends.counters import Counters
from jupyter_tunnel.backends.relay import abort, relay
from jupyter_tunnel.backends.sshtunnel_backend import SSHTunnelBackend


@pytest.fixture
def tcp_pairs() -> Iterator[Any]:
    """Make connected loopback TCP sockets (client end, server end); closed afterwards."""
    listener = socket.create_server(("127.0.0.1", 0))
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        made.extend((client, server))
        client.settimeout(10)
        return client, server

    yield make
    for sock in made:
        sock.close()
    listener.close()


def read_to_end(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Everything until EOF, and the error that ended the reading instead, if any."""
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except OSError as exc:
        return bytes(data), exc
    return bytes(data), None


class Relaying:
    """relay() in a thread, its outcome kept."""

    def __init__(self, sock: socket.socket, chan: Any) -> None:
        self.counters = Counters()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(sock, chan), daemon=True)
        self.thread.start()

    def _run(self, sock: socket.socket, chan: Any) -> None:
        try:
            relay(sock, chan, self.counters)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.error = exc
        finally:
            with contextlib.suppress(Exception):  # sending CLOSE on a dying connection
                chan.close()
            sock.close()

    def ended(self, timeout: float = 5.0) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def close_without_eof(chan: Any) -> None:
    """Send CLOSE alone, as a server may."""
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_CLOSE)
    message.add_int(chan.remote_chanid)
    chan.transport._send_user_message(message)


def test_half_closes_are_passed_on_both_ways(tcp_pairs: Any) -> None:
    got: dict[str, bytes] = {}

    def handler(chan: Any) -> None:
        mode = chan.recv(1)
        data = bytearray()
        if mode == b"B":  # answer first, then read what comes after our EOF
            chan.sendall(b"hello")
            chan.shutdown_write()
        while chunk := chan.recv(65536):
            data += chunk
        got[mode.decode()] = bytes(data)
        if mode == b"A":  # read to EOF, then answer
            chan.sendall(b"got %d" % len(data))
        chan.close()

    pair = SSHPair(handler)
    try:
        client, server = tcp_pairs()
        relaying = Relaying(server, pair.open())
        client.sendall(b"A" + b"z" * 300000)
        client.shutdown(socket.SHUT_WR)
        assert read_to_end(client) == (b"got 300000", None)
        assert relaying.ended() and relaying.error is None

        client, server = tcp_pairs()
        relaying = Relaying(server, pair.open())
        client.sendall(b"B")
        assert read_to_end(client) == (b"hello", None)  # the remote's EOF, cleanly
        client.sendall(b"after-eof")
        client.shutdown(socket.SHUT_WR)
        assert relaying.ended() and relaying.error is None
        deadline = time.monotonic() + 5
        while "B" not in got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got["B"] == b"after-eof"
        assert relaying.counters.snapshot()["bytes_in"] == 5
        assert pair.client.is_active()
    finally:
        pair.close()


def test_close_without_eof_resets_the_local_connection(tcp_pairs: Any) -> None:
    def handler(chan: Any) -> None:
        chan.recv(10)
        chan.sendall(b"y" * 100000)
        close_without_eof(chan)

    pair = SSHPair(handler)
    try:
        client, server = tcp_pairs()
        relaying = Relaying(server, pair.open())
        client.sendall(b"go")
        assert relaying.ended()
        data, error = read_to_end(client)
        assert isinstance(error, ConnectionResetError), (len(data), error)
        assert pair.client.is_active()  # only that channel ended
    finally:
        pair.close()


def test_a_dead_ssh_connection_resets_the_local_connections(tcp_pairs: Any) -> None:
    pair = SSHPair(stream_until_closed)
    try:
        downloading, server = tcp_pairs()
        download = Relaying(server, pair.open())
        downloading.sendall(b"stream")
        assert downloading.recv(1000)
        # the remote sent its EOF already: the relay waits on the local side alone
        half_closed, server = tcp_pairs()
        waiting = Relaying(server, pair.open())
        half_closed.sendall(b"short")
        assert read_to_end(half_closed) == (b"", None)
        pair.server.close()  # the SSH connection dies
        assert download.ended()
        data, error = read_to_end(downloading)
        assert isinstance(error, ConnectionResetError), (len(data), error)
        # this one had all its data and a clean end already: it stops waiting for its
        # client (which could send nowhere now) within a second or so
        assert waiting.ended(3) and waiting.error is None
    finally:
        pair.close()


class _Chain:
    """Stands in for a HopChain: one transport, closed by close()."""

    def __init__(self, transport: Any) -> None:
        self.transports = [transport]

    def alive(self) -> bool:
        return all(t.is_active() for t in self.transports)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports = []


def _backend_relay(backend: SSHTunnelBackend, sock: socket.socket, chan: Any
                   ) -> threading.Thread:
    thread = threading.Thread(target=backend.relay_connection, args=(sock, chan, True, "test"),
                              daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["close", "disconnect"])
def test_the_backend_ends_its_relays(tcp_pairs: Any, how: str) -> None:
    pair = SSHPair(stream_until_closed)
    backend = SSHTunnelBackend()
    try:
        backend.chain = _Chain(pair.client)  # type: ignore[assignment]
        reading, server = tcp_pairs()
        first = _backend_relay(backend, server, pair.open())
        reading.sendall(b"stream")
        assert reading.recv(1000)
        # a client that never reads: its relay blocks writing to it
        stalled, server = tcp_pairs()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        second = _backend_relay(backend, server, pair.open())
        stalled.sendall(b"stream")
        deadline = time.monotonic() + 5
        while backend.relaying() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.relaying() == 2
        time.sleep(0.3)  # its buffers fill
        began = time.monotonic()
        backend.close() if how == "close" else backend.disconnect()
        assert time.monotonic() - began < 3
        first.join(5)
        second.join(5)
        assert not first.is_alive() and not second.is_alive()
        assert backend.relaying() == 0 and backend.stats()["connections"] == 0
        data, error = read_to_end(reading)
        assert isinstance(error, ConnectionResetError), (len(data), error)
        with contextlib.suppress(OSError):  # what was in its buffer, then the reset
            assert read_to_end(stalled)[1] is not None
    finally:
        backend.close()
        pair.close()


def test_abort_resets_a_connection_another_thread_is_stuck_writing_to(tcp_pairs: Any) -> None:
    """What the backend does to a relay stuck writing to a client that does not read: the
    writer is freed and the client, reading on, gets a reset, never a clean end (a
    shutdown() would send a FIN first, and the client would read it as a whole answer)."""
    client, server = tcp_pairs()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            while True:
                server.sendall(b"x" * 65536)
        except OSError as exc:
            failed.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    deadline = time.monotonic() + 5
    while select.select([], [server], [], 0)[1]:  # until its buffers are full: it blocks
        assert time.monotonic() < deadline and not failed
        time.sleep(0.01)
    abort(server)
    writer.join(5)
    assert not writer.is_alive() and failed, "the blocked writer was not freed"
    data, error = read_to_end(client)  # the server end is not closed yet
    assert data and isinstance(error, ConnectionResetError), (len(data), error)


def test_retarget_swaps_the_route_whole() -> None:
    from jupyter_tunnel.backends.sshtunnel_listen import Route, Target

    target = Target(Route("a", 1))
    backend = SSHTunnelBackend()
    backend._targets[9999] = target
    route = target.route
    backend.retarget(9999, "b", 2)
    assert (route.host, route.port) == ("a", 1)  # one already taken is left as it was
    assert (target.route.host, target.route.port) == ("b", 2)
    with pytest.raises(AttributeError):
        target.route.host = "c"  # type: ignore[misc]


def test_the_backend_hands_memory_back_when_its_last_connection_ends(
        tcp_pairs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_tunnel.backends import memory

    calls: list[tuple[int, int]] = []
    backend = SSHTunnelBackend()
    releaser = memory.MemoryReleaser(interval=3600, idle_interval=0,
                                     trim=lambda pad: calls.append((pad, backend.relaying())))
    monkeypatch.setattr(memory, "releaser", releaser)
    pair = SSHPair(stream_until_closed)
    try:
        backend.chain = _Chain(pair.client)  # type: ignore[assignment]
        clients, threads = [], []
        for _ in range(3):
            client, server = tcp_pairs()
            threads.append(_backend_relay(backend, server, pair.open()))
            client.sendall(b"stream")
            assert client.recv(1000)
            clients.append(client)
        for client in clients[:2]:
            client.close()
        for thread in threads[:2]:
            thread.join(5)
        assert backend.relaying() == 1 and calls == []  # one still relays: not yet
        clients[2].close()
        threads[2].join(5)
        assert not threads[2].is_alive() and backend.relaying() == 0
        assert calls == [(0, 0)]  # once, after the last ended
    finally:
        backend.close()
        pair.close()
