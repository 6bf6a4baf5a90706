"""Resumable reverse forwards (``--reverse`` with resume on, the default): the helper on
beast listens, so a connection from beast to this machine rides out an outage of the link
to unicorn (nothing lost, nothing duplicated), and one made during the outage is held on
beast and answered once the link is back."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import need
from test_forwards import remote_port
from test_resume_tunnel import _outage, _wait

from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec
from jupyter_tunnel.tunnel import Tunnel

pytestmark = pytest.mark.network

SIZE = 6 << 20

# On beast: connect to 127.0.0.1:PORT, send the first half of the payload (seeded bytes),
# wait for a line on stdin, send the rest and half-close; print the sha256 and length of
# what came back.
CLIENT = r"""
import hashlib, random, socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
payload = random.Random(5).randbytes(size)
sock = socket.create_connection(("127.0.0.1", port), timeout=120)
back = bytearray()
def read():
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        back.extend(chunk)
reader = threading.Thread(target=read)
reader.start()
sock.sendall(payload[: size // 2])
print("half", flush=True)
sys.stdin.readline()
sock.sendall(payload[size // 2 :])
sock.shutdown(socket.SHUT_WR)
reader.join(120)
print(hashlib.sha256(back).hexdigest(), len(back), flush=True)
"""


class Echo:
    """An echo server here (the reverse forward's target); counts the bytes echoed."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.echoed = 0
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)
                self.echoed += len(chunk)
            conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo() -> Iterator[Echo]:
    made = Echo()
    yield made
    made.server.close()


def _tunnel(net: Sandbox, backend: str, port: int, target: int) -> Tunnel:
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend=backend,
                            keepalive_interval=1, keepalive_count_max=2)
    return manager.open(build_spec("beast via unicorn", jupyter=False,
                                   reverse=[f"{port}:127.0.0.1:{target}"]))


def _listening_on_beast(net: Sandbox, port: int) -> str:
    """The command of the process that listens on beast's 127.0.0.1:port."""
    out = net.run_in("beast", ["ss", "-Htlnp", f"sport = :{port}"], capture_output=True,
                     text=True).stdout
    return out


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_a_reverse_connection_rides_out_an_outage(net: Sandbox, echo: Echo,
                                                  backend: str) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    port = remote_port(net) + 7000
    with _tunnel(net, backend, port, echo.port) as tunnel:
        assert tunnel.forwards[0]["type"] == "reverse"
        assert tunnel.to_dict()["resume"] is not None
        assert "python" in _listening_on_beast(net, port)  # the helper listens, not sshd
        client = net.popen_in("beast", [sys.executable, "-c", CLIENT, str(port), str(SIZE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline().strip() == "half"
            _wait(lambda: echo.echoed >= 1 << 20, 60, "the echo under way")
            _outage(net, tunnel, held=1)
            client.stdin.write("go\n")
            client.stdin.flush()
            digest, length = client.stdout.readline().split()
            client.wait(60)
        finally:
            client.kill()
        payload = random.Random(5).randbytes(SIZE)
        assert (digest, int(length)) == (hashlib.sha256(payload).hexdigest(), SIZE)
        assert echo.connections == 1 and tunnel.reconnects >= 1


def test_a_connection_made_during_the_outage_waits_on_beast(net: Sandbox,
                                                             echo: Echo) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    port = remote_port(net) + 7100
    clients: list[subprocess.Popen[str]] = []
    with _tunnel(net, "openssh", port, echo.port) as tunnel:
        net.cut_link()
        try:
            _wait(lambda: tunnel.state.value == "reconnecting", 20, "the cut noticed")
            client = net.popen_in("beast", [sys.executable, "-c", CLIENT, str(port), "64"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            clients.append(client)
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline().strip() == "half"  # beast took the connection
            client.stdin.write("go\n")
            client.stdin.flush()
            time.sleep(3)
            assert client.poll() is None and echo.connections == 0  # held meanwhile
        finally:
            net.restore_link()
        try:
            digest, length = client.stdout.readline().split()
            assert client.wait(30) == 0
        finally:
            for made in clients:
                made.kill()
                made.wait()
        payload = random.Random(5).randbytes(64)
        assert (digest, int(length)) == (hashlib.sha256(payload).hexdigest(), 64)
        assert echo.connections == 1
    assert _listening_on_beast(net, port) == ""  # closing the tunnel frees the port there


def _round_trip(net: Sandbox, port: int) -> None:
    client = net.popen_in("beast", [sys.executable, "-c", CLIENT, str(port), "4096"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = client.communicate("go\n", timeout=60)
    finally:
        client.kill()
    digest, length = out.split()[-2:]
    payload = random.Random(5).randbytes(4096)
    assert (digest, int(length)) == (hashlib.sha256(payload).hexdigest(), 4096)


def test_a_helper_started_anew_listens_again(net: Sandbox, echo: Echo) -> None:
    port = remote_port(net) + 7200
    with _tunnel(net, "openssh", port, echo.port) as tunnel:
        for _ in range(3):
            _round_trip(net, port)
        helper = tunnel.to_dict()["resume"]["helper_pid"]
        net.run_in("beast", ["kill", "-9", str(helper)], check=True)
        net.kill_sessions("unicorn")  # the reconnect starts a new helper, which binds again
        _wait(lambda: tunnel.reconnects >= 1 and tunnel.state.value == "ready", 30,
              "a reconnect")
        _wait(lambda: "python" in _listening_on_beast(net, port), 30, "the port bound again")
        assert tunnel.to_dict()["resume"]["helper_pid"] != helper
        for _ in range(3):  # the new helper's streams are not mistaken for the old ones
            _round_trip(net, port)
        assert echo.connections == 6


def test_a_reverse_forward_on_another_address_stays_sshds(net: Sandbox, echo: Echo) -> None:
    port = remote_port(net) + 7300
    manager = TunnelManager(ssh_config=str(net.ssh_config))
    spec = build_spec("beast via unicorn", jupyter=False,
                      reverse=[f"0.0.0.0:{port}:127.0.0.1:{echo.port}"])
    with manager.open(spec) as tunnel:
        assert tunnel.to_dict()["resume"] is not None  # resume is on, but not for this one
        listening = _listening_on_beast(net, port)
        assert "sshd" in listening and "python" not in listening
        # sshd's GatewayPorts no: loopback only
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
