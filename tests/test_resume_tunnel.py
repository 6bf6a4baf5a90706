"""Resumable forwards through a tunnel (``TunnelManager.resume``): a 64 MiB download and an
upload cut by a 20 s outage of the link to unicorn carry on when it is back, byte for byte,
in both backends; closing the tunnel ends the helper on beast."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import CLI, need
from test_forwards import remote_port
from test_open import api_status

from jupyter_tunnel import procinfo
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec
from jupyter_tunnel.tunnel import Tunnel

pytestmark = pytest.mark.network

# argv: port, size. Each client gets SIZE bytes of a seeded random stream, then the close;
# a client that sends first ("echo") gets what it sent back instead, until its EOF.
SERVER = r"""
import random, socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
print("listening", flush=True)
size = int(sys.argv[2])
data = random.Random(7).randbytes(size)
def serve(conn):
    try:
        conn.settimeout(0.5)
        try:
            first = conn.recv(65536)
        except socket.timeout:
            first = b""
        conn.settimeout(None)
        if first:
            conn.sendall(first)
            while chunk := conn.recv(65536):
                conn.sendall(chunk)
        else:
            conn.sendall(data)
    except OSError:
        pass
    conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
SIZE = 64 << 20  # as the user: a 64 MiB download, the link cut for 20 s
OUTAGE = 20.0


@pytest.fixture
def server(net: Sandbox) -> Iterator[int]:
    port = remote_port(net) + 4000
    proc = net.popen_in("beast", [sys.executable, "-c", SERVER, str(port), str(SIZE)],
                        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    yield port
    proc.kill()
    proc.wait()


def _tunnel(net: Sandbox, backend: str, port: int, resume: bool = True) -> Tunnel:
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend=backend, resume=resume,
                            keepalive_interval=1, keepalive_count_max=2)
    return manager.open(build_spec("beast via unicorn", jupyter=False,
                                   forwards=[f"0:127.0.0.1:{port}"]))


def _wait(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _outage(net: Sandbox, tunnel: Tunnel, held: int = 0) -> None:
    """Cut the link to unicorn until the tunnel noticed (and shows ``held`` connections
    held), and a while more; then restore it."""
    net.cut_link()
    try:
        _wait(lambda: tunnel.state.value == "reconnecting", 20, "the cut noticed")
        if held:
            _wait(lambda: (tunnel.to_dict()["resume"] or {}).get("held") == held, 20,
                  f"{held} connection(s) shown held")
            assert not tunnel.to_dict()["resume"]["helper_reached"]
        time.sleep(OUTAGE)
    finally:
        net.restore_link()


def _read_to_end(sock: socket.socket, into: bytearray) -> str:
    try:
        while chunk := sock.recv(65536):
            into += chunk
    except ConnectionResetError:
        return "reset"
    return "eof"


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_a_download_cut_by_an_outage_completes_byte_for_byte(
        net: Sandbox, server: int, backend: str) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    expected = hashlib.sha256(random.Random(7).randbytes(SIZE)).hexdigest()
    with _tunnel(net, backend, server) as tunnel:
        assert tunnel.to_dict()["resume"]["helper_pid"], tunnel.notices
        with socket.create_connection(("127.0.0.1", tunnel.forwards[0]["local_port"]),
                                      timeout=120) as sock:
            got = bytearray()
            while len(got) < 2 << 20:  # under way, then the outage
                got += sock.recv(65536)
            _outage(net, tunnel, held=1)
            assert _read_to_end(sock, got) == "eof"
        assert len(got) == SIZE and hashlib.sha256(got).hexdigest() == expected
        assert tunnel.reconnects == 1


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_an_upload_cut_by_an_outage_comes_back_whole(net: Sandbox, server: int,
                                                     backend: str) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    payload = random.Random(11).randbytes(6 << 20)
    with _tunnel(net, backend, server) as tunnel:
        with socket.create_connection(("127.0.0.1", tunnel.forwards[0]["local_port"]),
                                      timeout=120) as sock:
            back = bytearray()
            ended: list[str] = []
            reader = threading.Thread(target=lambda: ended.append(_read_to_end(sock, back)))
            reader.start()
            half = len(payload) // 2
            sock.sendall(payload[:half])
            _wait(lambda: len(back) >= 1 << 20, 60, "the echo under way")
            _outage(net, tunnel, held=1)
            sock.sendall(payload[half:])  # taken by the near end while it reconnects
            sock.shutdown(socket.SHUT_WR)  # the half-close travels too
            reader.join(120)
        assert ended == ["eof"] and bytes(back) == payload


def test_without_resume_the_same_download_is_reset(net: Sandbox, server: int) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    with _tunnel(net, "sshtunnel", server, resume=False) as tunnel:
        assert tunnel.to_dict()["resume"] is None
        with socket.create_connection(("127.0.0.1", tunnel.forwards[0]["local_port"]),
                                      timeout=120) as sock:
            got = bytearray()
            while len(got) < 2 << 20:
                got += sock.recv(65536)
            _outage(net, tunnel)
            assert _read_to_end(sock, got) == "reset" and len(got) < SIZE


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_closing_the_tunnel_ends_its_helper(net: Sandbox, server: int, backend: str) -> None:
    tunnel = _tunnel(net, backend, server)
    try:
        pid = tunnel.to_dict()["resume"]["helper_pid"]
        started = procinfo.start_time(pid)
        assert started is not None  # beast is this machine: its process is visible here
        with socket.create_connection(("127.0.0.1", tunnel.forwards[0]["local_port"]),
                                      timeout=60) as sock:
            assert sock.recv(65536)
    finally:
        tunnel.close()
    _wait(lambda: not procinfo.is_alive(pid, started), 10, "the helper gone")


def test_the_cli_opens_a_resumable_tunnel_to_jupyter_and_says_so(cli: CLI) -> None:
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", "--resume")
    try:
        assert info["state"] == "ready" and info["resume"]["helper_pid"], info
        pid = info["resume"]["helper_pid"]
        started = procinfo.start_time(pid)
        assert api_status(str(info["url"])) == 200  # through the helper on beast
        # the detached process saves its record when what it holds changes
        _wait(lambda: "resumable connection(s), helper reached"
              in cli.run("status", "beast").stdout, 20, "status: the helper reached")
    finally:
        cli.run("close", "--all")
    _wait(lambda: not procinfo.is_alive(pid, started), 10, "the helper gone with the tunnel")
    plain = cli.json("open", "beast", "--via", "unicorn", "--detach", "--no-resume")
    try:
        assert plain["resume"] is None
        assert "resume:      off" in cli.run("status", "beast").stdout
    finally:
        cli.run("close", "--all")
