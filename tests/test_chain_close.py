"""Closing the in-process backend's hops while the link to the first one is cut and an
upload is in flight: the close returns at once and frees the writer (it waited for the
network to come back: a tunnel stayed 'reconnecting' with its streams never held)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need

from jupyter_tunnel.backends.chain import HopChain
from jupyter_tunnel.backends.streamlocal import open_streamlocal
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import Hop
from jupyter_tunnel.sshconfig import SSHConfig, resolve_chain


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[str]:
    """A Unix socket on beast (this machine's files) that reads and drops what it gets."""
    path = str(tmp_path / "sink.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)
    os.unlink(path)


def test_closing_hops_cut_mid_upload_returns_at_once(net: Sandbox, sink: str) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    chain = HopChain()
    chain.connect(resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(net.ssh_config)),
                  None, 20.0)
    try:
        # a small send buffer to unicorn: once the link is cut, the writer blocks in that
        # socket (holding the first hop's write lock) long before any channel window is spent
        chain.transports[0].sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chan = open_streamlocal(chain.transports[-1], sink)
        sent = [0]
        ended: list[BaseException] = []

        def upload() -> None:
            block = bytes(32768)
            try:
                while True:
                    chan.sendall(block)
                    sent[0] += len(block)
            except BaseException as exc:  # what the close made of the blocked send
                ended.append(exc)

        writer = threading.Thread(target=upload, daemon=True)
        writer.start()
        deadline = time.monotonic() + 30
        while sent[0] < 1 << 20:
            assert time.monotonic() < deadline and not ended, (sent, ended)
            time.sleep(0.01)
        net.cut_link()
        try:
            last, still_since = sent[0], time.monotonic()
            while time.monotonic() - still_since < 1.0:  # the writer stuck for a second
                if sent[0] != last:
                    last, still_since = sent[0], time.monotonic()
                assert time.monotonic() < deadline, "the upload never stalled"
                time.sleep(0.05)
            closer = threading.Thread(target=chain.close, daemon=True)
            began = time.monotonic()
            closer.start()
            closer.join(5)
            assert not closer.is_alive(), "closing the hops waited for the cut link"
            writer.join(5)
            assert not writer.is_alive() and ended, "the writer is still blocked"
            assert time.monotonic() - began < 2.0
        finally:
            net.restore_link()
    finally:
        chain.close()
