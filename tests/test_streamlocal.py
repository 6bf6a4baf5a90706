"""A channel to a Unix socket on the last hop, opened by the in-process backend's hops
(as ``ssh -L port:/path.sock`` asks for it): through unicorn to a socket on beast."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from jupyter_tunnel.backends.chain import HopChain
from jupyter_tunnel.backends.streamlocal import open_streamlocal
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import Hop
from jupyter_tunnel.sshconfig import SSHConfig, resolve_chain


@pytest.fixture
def chain(net: Sandbox) -> Iterator[HopChain]:
    hops = resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(net.ssh_config))
    chain = HopChain()
    chain.connect(hops, None, 20.0)
    yield chain
    chain.close()


@pytest.fixture
def echo_socket(tmp_path: Path) -> Iterator[str]:
    """A Unix socket that answers each connection with what it sent, upper-cased."""
    path = str(tmp_path / "echo.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)
    os.unlink(path)


def test_a_unix_socket_on_the_last_hop_answers(chain: HopChain, echo_socket: str) -> None:
    chan = open_streamlocal(chain.transports[-1], echo_socket)
    try:
        chan.settimeout(10)
        payload = os.urandom(200_000).hex().encode()  # 400 kB, lowercase hex
        chan.sendall(payload)
        chan.shutdown_write()
        got = bytearray()
        while data := chan.recv(65536):
            got += data
        assert bytes(got) == payload.upper()
    finally:
        chan.close()


def test_a_missing_socket_is_refused_and_the_connection_lives_on(
        chain: HopChain, echo_socket: str, tmp_path: Path) -> None:
    with pytest.raises(paramiko.ChannelException):
        open_streamlocal(chain.transports[-1], str(tmp_path / "none.sock"))
    chan = open_streamlocal(chain.transports[-1], echo_socket)  # the same transport
    try:
        chan.settimeout(10)
        chan.sendall(b"still here")
        assert chan.recv(100) == b"STILL HERE"
    finally:
        chan.close()


def test_a_relative_path_is_refused_before_asking(chain: HopChain) -> None:
    with pytest.raises(ValueError, match="absolute"):
        open_streamlocal(chain.transports[-1], "relative.sock")
