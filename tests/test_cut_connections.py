"""A connection through a tunnel either completes or is seen to fail: one cut by a lost
SSH connection or by closing the tunnel is reset, never ended with a clean EOF (a cut
download must not look complete), while one the far end finishes ends with its EOF.

These are the plain forwards (``--no-resume``); resumable ones ride out the cut
(test_resume_tunnel)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import need
from test_forwards import remote_port

from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec
from jupyter_tunnel.tunnel import Tunnel

pytestmark = pytest.mark.network

# Sends argv[2] bytes (0: without end) to each client, then closes.
SERVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
print("listening", flush=True)
size = int(sys.argv[2])
def serve(conn):
    sent = 0
    try:
        while not size or sent < size:
            sent += conn.send(b"x" * min(65536, size - sent if size else 65536))
    except OSError:
        pass
    conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
SIZE = 8 << 20


@pytest.fixture
def servers(net: Sandbox) -> Iterator[tuple[int, int]]:
    """Two servers on beast's loopback: one sends 8 MiB and closes, one never stops."""
    base = remote_port(net) + 3000
    procs = [net.popen_in("beast", [sys.executable, "-c", SERVER, str(base + i), str(size)],
                          stdout=subprocess.PIPE, text=True) for i, size in enumerate([SIZE, 0])]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    yield base, base + 1
    for proc in procs:
        proc.kill()
        proc.wait()


def _tunnel(net: Sandbox, backend: str, ports: tuple[int, int]) -> Tunnel:
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend=backend,
                            keepalive_interval=1, keepalive_count_max=2, resume=False)
    return manager.open(build_spec("beast via unicorn", jupyter=False,
                                   forwards=[f"0:127.0.0.1:{p}" for p in ports]))


def _read_to_end(sock: socket.socket) -> tuple[int, str]:
    """Bytes read, and how the stream ended: 'eof' or 'reset'."""
    got = 0
    try:
        while chunk := sock.recv(65536):
            got += len(chunk)
    except ConnectionResetError:
        return got, "reset"
    return got, "eof"


def _streaming(tunnel: Tunnel) -> socket.socket:
    """A connection to the endless server, 1 MiB of it read."""
    sock = socket.create_connection(("127.0.0.1", tunnel.forwards[1]["local_port"]))
    sock.settimeout(60)
    got = 0
    while got < 1 << 20:
        got += len(sock.recv(65536))
    return sock


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_a_finished_answer_ends_with_its_eof(net: Sandbox, servers: tuple[int, int],
                                            backend: str) -> None:
    with _tunnel(net, backend, servers) as tunnel:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", tunnel.forwards[0]["local_port"]),
                                          timeout=60) as sock:
                assert _read_to_end(sock) == (SIZE, "eof")


@pytest.mark.parametrize(("backend", "how"), [
    ("openssh", "master killed"), ("openssh", "link cut"), ("sshtunnel", "link cut")])
def test_a_cut_connection_is_reset(net: Sandbox, servers: tuple[int, int], backend: str,
                                   how: str) -> None:
    if how == "link cut" and not net.netns:
        need("cutting the link needs the namespace network")
    with _tunnel(net, backend, servers) as tunnel:
        sock = _streaming(tunnel)
        if how == "master killed":
            os.kill(tunnel.to_dict()["children"][0]["pid"], signal.SIGKILL)
        else:
            net.cut_link()
        try:
            assert _read_to_end(sock)[1] == "reset"
        finally:
            if how == "link cut":
                net.restore_link()
            sock.close()
        # the tunnel comes back, and carries new connections to their end
        deadline = time.monotonic() + 60
        while tunnel.reconnects < 1 or tunnel.state.value != "ready":
            assert time.monotonic() < deadline, tunnel.to_dict()
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", tunnel.forwards[0]["local_port"]),
                                      timeout=60) as fresh:
            assert _read_to_end(fresh) == (SIZE, "eof")


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_closing_the_tunnel_resets_its_connections(net: Sandbox, servers: tuple[int, int],
                                                   backend: str) -> None:
    tunnel = _tunnel(net, backend, servers)
    sock = _streaming(tunnel)
    tunnel.close()
    with sock:
        assert _read_to_end(sock)[1] == "reset"
