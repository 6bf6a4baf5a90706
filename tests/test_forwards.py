"""Extra forwards (--forward), reverse tunnels (--reverse) and --no-jupyter, carrying data
both ways with half-close, over the real network."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, free_port, port_is_free
from test_faults import assert_left_nothing, failed
from test_open import api_status
from test_survive import wait_for

from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network

# Reads until EOF, then answers with what it read and closes: only a forward that passes
# a half-close on (and keeps the other direction open) delivers the answer.
ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
print("listening", flush=True)
def serve(conn):
    data = bytearray()
    while chunk := conn.recv(65536):
        data += chunk
    conn.sendall(bytes(data))
    conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Sends argv[2] bytes to 127.0.0.1:argv[1], shuts down writing, prints the answer's sha256.
CLIENT = r"""
import hashlib, socket, sys
payload = bytes(range(256)) * (int(sys.argv[2]) // 256)
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as s:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    answer = bytearray()
    while chunk := s.recv(65536):
        answer += chunk
print(hashlib.sha256(payload).hexdigest(), hashlib.sha256(answer).hexdigest(), len(answer))
"""
SIZE = 1 << 20


def round_trip(port: int) -> None:
    """Send 1 MiB through 127.0.0.1:port, half-close, and get all of it back."""
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(SIZE)],
                         capture_output=True, text=True, timeout=60)
    sent, got, length = out.stdout.split()
    assert (got, int(length)) == (sent, SIZE), out.stderr


def remote_port(net: Sandbox) -> int:
    """A port that nothing on beast listens on."""
    return 20000 + (os.getpid() * 7 + int(time.time())) % 5000


@pytest.fixture
def beast_echo(net: Sandbox) -> Iterator[int]:
    """An echo server on beast's loopback (reachable only through the tunnel)."""
    port = remote_port(net) + 5000
    proc = net.popen_in("beast", [sys.executable, "-c", ECHO_SERVER, str(port)],
                        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture
def local_echo() -> Iterator[int]:
    """An echo server on this machine's loopback, for reverse forwards."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_RUNTIME_DIR"}  # not "ours"
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(free_port())],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    port = int(proc.args[-1])  # type: ignore[index]
    yield port
    proc.kill()
    proc.wait()


def test_extra_forward_beside_jupyter(cli: CLI, beast_echo: int, runtime_dir: Path) -> None:
    local = free_port()
    info = cli.json("open", "beast", "--via", "unicorn", "--detach",
                    "--forward", f"{local}:127.0.0.1:{beast_echo}")
    try:
        assert api_status(info["url"]) == 200  # the Jupyter forward still works
        assert info["forwards"] == [{
            "type": "local", "listen": f"127.0.0.1:{local}", "to": f"127.0.0.1:{beast_echo}",
            "spec": f"{local}:127.0.0.1:{beast_echo}", "local_port": local}]
        round_trip(local)
        status = cli.run("status", "beast").stdout
        assert f"forward:     local 127.0.0.1:{local} -> 127.0.0.1:{beast_echo}" in status
    finally:
        assert cli.run("close", "beast").returncode == 0
    assert port_is_free(local) and port_is_free(info["local_port"])
    assert_left_nothing(runtime_dir)


def beast_client(net: Sandbox, port: int) -> None:
    """Run the half-close round trip on beast against its 127.0.0.1:port."""
    out = net.run_in("beast", [sys.executable, "-c", CLIENT, str(port), str(SIZE)],
                     capture_output=True, text=True, timeout=60)
    sent, got, length = out.stdout.split()
    assert (got, int(length)) == (sent, SIZE), out.stderr


def test_reverse_tunnel_round_trip_and_after_reconnect(cli: CLI, net: Sandbox,
                                                       local_echo: int,
                                                       runtime_dir: Path) -> None:
    port = remote_port(net)
    result = cli.run("open", "beast", "--via", "unicorn", "--no-jupyter", "--detach",
                     "--reverse", f"{port}:127.0.0.1:{local_echo}",
                     "--TunnelManager.keepalive_interval=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reverse 127.0.0.1:{port} -> 127.0.0.1:{local_echo}"
    try:
        beast_client(net, port)
        info = cli.json("status", "beast")
        assert info["url"] is None and info["jupyter"] is False
        net.kill_sessions("unicorn")  # the remote forward must be asked for again
        wait_for(lambda: cli.json("status", "beast")["reconnects"] == 1, 15, "a reconnect")
        wait_for(lambda: cli.json("status", "beast")["state"] == "ready", 15, "ready")
        beast_client(net, port)
    finally:
        assert cli.run("close", "beast").returncode == 0
    assert_left_nothing(runtime_dir)


def test_reverse_port_taken_on_the_target(cli: CLI, net: Sandbox, local_echo: int,
                                          runtime_dir: Path) -> None:
    port = remote_port(net) + 1
    holder = net.popen_in("beast", [sys.executable, "-c", ECHO_SERVER, str(port)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "listening"
        result = cli.run("open", "beast", "--via", "unicorn", "--no-jupyter",
                         "--reverse", f"{port}:127.0.0.1:{local_echo}")
        failed(result, "beast (", f"refused to listen on 127.0.0.1:{port} for --reverse",
               "Choose another remote port")
    finally:
        holder.kill()
        holder.wait()
    assert_left_nothing(runtime_dir)


def test_half_close_through_a_local_forward_in_process(net: Sandbox, beast_echo: int,
                                                       runtime_dir: Path) -> None:
    """The same through the Python API, several connections at once."""
    from jupyter_tunnel.manager import TunnelManager
    from jupyter_tunnel.spec import build_spec

    manager = TunnelManager(ssh_config=str(net.ssh_config))
    spec = build_spec("beast via unicorn", jupyter=False,
                      forwards=[f"0:127.0.0.1:{beast_echo}"])
    with manager.open(spec) as tunnel:
        port = tunnel.forwards[0]["local_port"]
        errors: list[BaseException] = []

        def one() -> None:
            try:
                round_trip(port)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        stats = tunnel.to_dict()
        assert stats["bytes_out"] >= 4 * SIZE and stats["bytes_in"] >= 4 * SIZE
        assert stats["connections_total"] == 4
    assert port_is_free(port)


def test_forward_usage_errors(cli: CLI, runtime_dir: Path) -> None:
    for args, words in [
        (["--no-jupyter"], "nothing to forward: with --no-jupyter give at least one --forward"),
        (["--forward", "abc"], "invalid --forward 'abc': expected PORT:HOST:HOSTPORT"),
        (["--forward", "0.0.0.0:8080:localhost:80"], "local forwards listen on 127.0.0.1 only"),
        (["--reverse", "1313:localhost:0"], "destination port of --reverse 1313:localhost:0"),
        (["--no-jupyter", "--forward", "1:h:2", "--local-port", "5"],
         "--no-jupyter leaves out the Jupyter forward, so --local-port cannot be used"),
    ]:
        result = cli.run("open", "beast", "--via", "unicorn", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, result.stderr
    assert_left_nothing(runtime_dir)
