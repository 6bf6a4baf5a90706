"""The in-process backend's tuning of paramiko: a channel buffer that behaves as paramiko's,
a locked event pipe, a channel record that is trimmed without losing open channels,
OpenSSH's order of ciphers; all of it on our own transports only."""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko
import paramiko.pipe
import pytest
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from jupyter_tunnel.backends import tuning

_KEY: list[Any] = []


def _host_key() -> Any:
    if not _KEY:
        _KEY.append(paramiko.ECDSAKey.generate())
    return _KEY[0]


class _Server(paramiko.ServerInterface):  # type: ignore[misc]
    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_direct_tcpip_request(self, chanid: int, origin: Any, dest: Any) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_port_forward_request(self, address: str, port: int) -> int:
        return port or 5000


class SSHPair:
    """A client transport (ours unless told) logged in to a stock paramiko server over a
    socketpair; ``handler(channel)`` runs in a thread for each channel the client opens."""

    def __init__(self, handler: Callable[[Any], None] | None = None,
                 client: Callable[[Any], Any] = tuning.new_transport) -> None:
        left, right = socket.socketpair()
        self.server = paramiko.Transport(right)
        self.server.add_server_key(_host_key())
        starting = threading.Thread(target=self.server.start_server,
                                    kwargs={"server": _Server()}, daemon=True)
        starting.start()
        self.client = client(left)
        self.client.start_client(timeout=10)
        starting.join(10)
        self.client.auth_password("user", "password")
        self.server_channels: list[Any] = []
        self._handler = handler
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.server.is_active():
            chan = self.server.accept(0.2)
            if chan is not None:
                self.server_channels.append(chan)
                if self._handler is not None:
                    threading.Thread(target=self._run, args=(chan,), daemon=True).start()

    def _run(self, chan: Any) -> None:
        assert self._handler is not None
        with contextlib.suppress(Exception):  # a dead channel ends a handler
            self._handler(chan)

    def open(self) -> Any:
        return self.client.open_channel("direct-tcpip", ("target", 1), ("origin", 2))

    def close(self) -> None:
        self.client.close()
        self.server.close()


def stream_until_closed(chan: Any) -> None:
    """Send data until the channel is closed."""
    if chan.recv(100) == b"stream":
        while True:
            chan.sendall(b"x" * 32768)
    chan.close()


# the channel buffer ---------------------------------------------------------------------
@pytest.mark.parametrize("pipe_class", [BufferedPipe, tuning.ChunkPipe])
def test_chunk_pipe_reads_what_paramikos_buffer_reads(pipe_class: type) -> None:
    rng = random.Random(7)
    pipe, sent, got = pipe_class(), bytearray(), bytearray()
    for _ in range(3000):
        data = rng.randbytes(rng.randint(0, 300))
        pipe.feed(data)
        sent += data
        if rng.random() < 0.6 and len(pipe):
            got += pipe.read(rng.randint(1, 500), 0.0)
    got += pipe.empty()
    assert bytes(got) == bytes(sent) and len(pipe) == 0
    with pytest.raises(PipeTimeout):
        pipe.read(10, 0.0)
    pipe.feed(b"end")
    pipe.close()
    assert (pipe.read(10), pipe.read(10)) == (b"end", b"")


def test_chunk_pipe_wakes_a_waiting_reader_and_sets_its_event() -> None:
    pipe, event = tuning.ChunkPipe(), threading.Event()
    pipe.set_event(event)
    assert not event.is_set()
    threading.Timer(0.05, pipe.feed, args=(b"hello",)).start()
    assert pipe.read(100, timeout=5) == b"hello"
    assert not event.is_set()
    pipe.feed(b"x")
    assert event.is_set() and pipe.read_ready()


# scoped to our transports ---------------------------------------------------------------
def _tuned(chan: Any) -> bool:
    return (type(chan.in_buffer) is tuning.ChunkPipe
            and type(chan.in_stderr_buffer) is tuning.ChunkPipe
            and type(chan._pipe) is tuning._LockedPipe)


def test_our_channels_are_tuned_and_nobody_elses() -> None:
    # nothing of paramiko's is replaced for the whole process
    assert paramiko.channel.BufferedPipe is BufferedPipe
    assert paramiko.pipe.make_pipe.__module__ == "paramiko.pipe"
    assert paramiko.pipe.make_pipe is not tuning._LockedPipe
    assert not any(isinstance(h, logging.NullHandler)
                   for h in logging.getLogger("paramiko").handlers)
    incoming: list[Any] = []
    ours = SSHPair(lambda chan: chan.recv(10))
    plain = SSHPair(lambda chan: chan.recv(10), client=paramiko.Transport)
    try:
        chan = ours.open()
        assert _tuned(chan) and chan.logger.name == tuning.LOG_NAME
        assert ours.client.get_log_channel() == tuning.LOG_NAME
        fd = chan.fileno()  # the pipe made in advance, not a new one
        assert fd == chan._pipe.fileno()
        chan.sendall(b"hi")
        # a channel the server opens to us (a remote forward) is tuned as well
        ours.client.request_port_forward("127.0.0.1", 5000,
                                         handler=lambda c, *_: incoming.append(c))
        ours.server.open_forwarded_tcpip_channel(("1.2.3.4", 1), ("127.0.0.1", 5000))
        deadline = time.monotonic() + 5
        while not incoming and time.monotonic() < deadline:
            time.sleep(0.01)
        assert incoming and _tuned(incoming[0])

        # a plain paramiko Transport made outside our code keeps paramiko's own
        other = plain.open()
        assert type(other.in_buffer) is BufferedPipe and other._pipe is None
        other.fileno()
        assert type(other._pipe) is paramiko.pipe.PosixPipe
        assert type(plain.client._channels) is paramiko.transport.ChannelMap
        assert plain.client.get_log_channel() == "paramiko.transport"
        # nor are the server's channels (a stock transport) touched
        assert all(type(c.in_buffer) is BufferedPipe for c in ours.server_channels)
        other.close()
    finally:
        for chan_ in incoming:
            chan_.close()
        ours.close()
        plain.close()


def test_our_log_channel_is_silenced_alone() -> None:
    logger = logging.getLogger(tuning.LOG_NAME)
    assert logger.propagate is False
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert logging.getLogger("paramiko").propagate is True


# ciphers ---------------------------------------------------------------------------------
def test_ciphers_in_openssh_order() -> None:
    supported = ["aes128-ctr", "aes256-ctr", "aes128-cbc", "aes128-gcm@openssh.com",
                 "aes256-gcm@openssh.com"]
    assert tuning.cipher_order(supported, aes=True)[:3] == [
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr"]
    assert tuning.cipher_order([*supported, "chacha20-poly1305@openssh.com"], aes=False)[:2] \
        == ["chacha20-poly1305@openssh.com", "aes128-ctr"]
    assert sorted(tuning.cipher_order(supported, aes=False)) == sorted(supported)
    left, right = socket.socketpair()
    transport = tuning.new_transport(left)
    try:
        opts = transport.get_security_options()
        assert opts.ciphers[0].startswith(
            "aes128-gcm" if tuning.cpu_has_aes() else "aes128-ctr")
        assert not [c for c in opts.ciphers if c.endswith("-cbc")]
        assert opts.digests[0] == "hmac-sha2-256-etm@openssh.com"
        assert not [m for m in opts.digests if "md5" in m or m.endswith("-96")]
        assert "hmac-sha1" in opts.digests  # OpenSSH still offers it
        assert transport.default_window_size == tuning.WINDOW
    finally:
        transport.close()
        right.close()


def test_a_session_negotiates_what_we_offer() -> None:
    pair = SSHPair(lambda chan: chan.sendall(chan.recv(10)))
    try:
        chan = pair.open()
        chan.sendall(b"ping")
        assert chan.recv(10) == b"ping"
        cipher = pair.client.remote_cipher
        assert cipher in tuning.cipher_order(list(tuning._AEAD_AES + tuning._CTR))
        chan.close()
    finally:
        pair.close()


@pytest.mark.parametrize(("line", "has"), [
    ("flags\t\t: fpu vme de pse aes avx sse", True),
    ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32", True),
    ("flags\t\t: fpu vme vaes avx", False),  # a substring is not the flag
    ("model name\t: Some aes CPU", False),
    ("flags", False),
])
def test_cpuinfo_aes_flag(line: str, has: bool) -> None:
    assert tuning._cpuinfo_has_aes(line + "\n") is has


@pytest.mark.parametrize(("answers", "has"), [
    ({"hw.optional.arm.FEAT_AES": "1\n"}, True),
    ({"hw.optional.arm.FEAT_AES": "0\n", "machdep.cpu.features": "FPU VME AES SSE3\n"}, True),
    ({"machdep.cpu.features": "FPU VME SSE3\n"}, False),
    ({}, False),  # sysctl failed
])
def test_macos_aes(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str], has: bool) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(tuning, "_sysctl", lambda name: answers.get(name, ""))
    assert tuning.cpu_has_aes.__wrapped__() is has


# the record of channel ids ---------------------------------------------------------------
def test_old_channel_ids_are_forgotten_open_and_recent_ones_kept() -> None:
    left, right = socket.socketpair()
    transport = tuning.new_transport(left)
    try:
        def use(n: int) -> list[int]:
            ids = [transport._next_channel() for _ in range(n)]
            transport.channels_seen.update(dict.fromkeys(ids, True))
            return ids

        first = use(100)
        held = {cid: paramiko.Channel(cid) for cid in first[:3]}  # open for good
        for cid, chan in held.items():
            transport._channels.put(cid, chan)
        long_lived = paramiko.Channel(first[50])
        transport._channels.put(first[50], long_lived)
        transport.channel_events[first[60]] = threading.Event()  # an open that timed out
        ids = first + use(1000)
        # the first trim only notes what is open and what was used
        tuning.forget_old_channels(transport, keep=100, slack=0, min_interval=0)
        assert list(transport.channels_seen) == ids
        assert first[60] not in transport.channel_events
        later = use(300)
        del long_lived  # went away since that trim: its CLOSE reply may still come
        gc.collect()
        tuning.forget_old_channels(transport, keep=100, slack=0, min_interval=0)
        assert set(transport.channels_seen) == {*first[:3], first[50], *later}
        # too soon after the last trim: left alone
        use(1000)
        tuning.forget_old_channels(transport, keep=100, slack=0, min_interval=60)
        assert len(transport.channels_seen) == 1304
        tuning.forget_old_channels(transport, keep=100, slack=0, min_interval=0)
        assert set(transport.channels_seen) >= set(first[:3])
        assert first[50] not in transport.channels_seen and later[0] not in \
            transport.channels_seen
        # small enough: left alone
        size = len(transport.channels_seen)
        tuning.forget_old_channels(transport, keep=size, slack=0, min_interval=0)
        assert len(transport.channels_seen) == size
    finally:
        transport.close()
        right.close()


def test_trimming_keeps_a_long_lived_channel_and_the_session() -> None:
    """The reviewer's case: a download runs on channel 0 while many short channels come
    and go and the record is trimmed; closing the download later must not meet "Channel
    request for unknown channel" (which stops paramiko's transport thread)."""
    pair = SSHPair(stream_until_closed)
    try:
        long = pair.open()
        long.sendall(b"stream")
        assert long.recv(1000)
        long_id = long.get_id()
        for round_ in range(3):
            for _ in range(10):
                short = pair.open()
                short.sendall(b"short")
                short.recv(10)
                short.close()
            tuning.forget_old_channels(pair.client, keep=4, slack=0, min_interval=0)
            assert long_id in pair.client.channels_seen, round_
        assert len(pair.client.channels_seen) < 25  # the short ones were forgotten
        assert long.recv(1000)
        long.close()
        del long
        gc.collect()
        # gone from the open channels now, but its CLOSE reply may not have come yet
        for _ in range(10):
            short = pair.open()
            short.sendall(b"short")
            short.recv(10)
            short.close()
        tuning.forget_old_channels(pair.client, keep=4, slack=0, min_interval=0)
        assert long_id in pair.client.channels_seen
        time.sleep(0.5)
        assert pair.client.is_active()
        check = pair.open()  # still usable
        check.close()
    finally:
        pair.close()


def test_a_refused_open_is_trimmed_too() -> None:
    pair = SSHPair()
    try:
        pair.server.server_object.check_channel_direct_tcpip_request = \
            lambda *a: paramiko.OPEN_FAILED_CONNECT_FAILED
        for _ in range(20):
            with pytest.raises(paramiko.ChannelException):
                pair.open()
        assert len(pair.client.channels_seen) == 20
        for _ in range(2):
            tuning.forget_old_channels(pair.client, keep=4, slack=0, min_interval=0)
        assert len(pair.client.channels_seen) == 4 and pair.client.is_active()
    finally:
        pair.close()
