"""A tunnel's local port serves only its own user: another local user's process that
connects is closed before anything is forwarded (jupyter_tunnel/peers.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import need
from test_open import api_status

from jupyter_tunnel import peers
from jupyter_tunnel.sandbox import Sandbox

NOBODY = 65534
# what a browser would send, through bash's /dev/tcp: only bash is needed as the other user
GET = ('exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 9; '
       'printf "GET /api/status HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n" >&3; '
       'timeout 10 cat <&3')


def get_as(uid: int | None, port: int) -> subprocess.CompletedProcess[str]:
    """GET /api/status on 127.0.0.1:port as uid (None: as this process)."""
    who = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                  "--clear-groups"]
    return subprocess.run([*who, "bash", "-c", GET, "get", str(port)], capture_output=True,
                          text=True, timeout=30, check=False)


def test_proc_address_is_how_the_kernel_writes_it() -> None:
    little = socket.htonl(1) != 1
    assert peers.proc_address("127.0.0.1", 8080) == \
        ("0100007F" if little else "7F000001") + ":1F90"
    assert peers.proc_address("::1", 1) == \
        "00000000" * 3 + ("01000000" if little else "00000001") + ":0001"


@pytest.fixture(params=["sock_diag", "proc"])
def lookup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of asking who is at the other end: netlink, and /proc/net/tcp{,6}."""
    ways = {"sock_diag": peers._diag, "proc": peers._scan}
    monkeypatch.setattr(peers, "_lookups", [ways[request.param]])
    return str(request.param)


# connects to 127.0.0.1:argv[1] (from address argv[2] unless "", over IPv6 as
# ::ffff:127.0.0.1 if argv[3] == "6"), says "connected", holds it until stdin closes
CLIENT = """
import socket, sys
port, source, six = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "6"
c = socket.socket(socket.AF_INET6 if six else socket.AF_INET)
if source:
    c.bind((source, 0))
c.connect(("::ffff:127.0.0.1" if six else "127.0.0.1", port))
print("connected", flush=True)
sys.stdin.read()
"""


def accepted_from(server: socket.socket, uid: int | None, *, source: str = "",
                  six: bool = False) -> tuple[int | None, bool]:
    """(peer_uid, may_use) of a connection a client run as ``uid`` makes to ``server``."""
    python = "/usr/bin/python3" if uid is not None else sys.executable
    if not os.path.exists(python):
        need("another user's client needs the system's /usr/bin/python3")
    who = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                                  "--clear-groups"]
    argv = [*who, python, "-c", CLIENT, str(server.getsockname()[1]), source,
            "6" if six else "4"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as client:
        assert client.stdout is not None and client.stdout.readline() == "connected\n"
        conn, _ = server.accept()
        with conn:
            seen = peers.peer_uid(conn), peers.may_use(conn)
        client.communicate("")
    return seen


def test_my_own_connections_are_mine(lookup: str) -> None:
    me = os.geteuid()
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert accepted_from(server, None) == (me, True)
        assert accepted_from(server, None, six=True) == (me, True)  # an IPv6 client (Java)
        assert accepted_from(server, None, source="127.0.0.5") == (me, True)


def test_a_connection_already_closed_is_not_let_in(lookup: str) -> None:
    """Its other end is a TIME_WAIT leftover that no process owns (the tables say uid 0):
    not root's, and nobody's to forward to."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            client.sendall(b"written, then gone")
        time.sleep(0.2)
        conn, _ = server.accept()
        with conn:
            assert conn.recv(100) == b"written, then gone"
            assert conn.recv(100) == b""  # closed on its side
            assert peers.peer_uid(conn) is None
            assert not peers.may_use(conn)


@pytest.mark.network
def test_another_user_is_refused_however_it_connects(lookup: str, net: Sandbox) -> None:
    if os.geteuid() != 0 or not net.subnet_a:
        need("switching to another user needs root, and a source address the sandbox's link")
    base, last = net.subnet_a.split("/")[0].rsplit(".", 1)
    here = f"{base}.{int(last) + 1}"  # this namespace's own address on the sandbox's link
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert accepted_from(server, NOBODY) == (NOBODY, False)
        assert accepted_from(server, NOBODY, six=True) == (NOBODY, False)
        # from a non-loopback address of this machine to 127.0.0.1: still this machine
        assert accepted_from(server, NOBODY, source=here) == (NOBODY, False)


@pytest.mark.network
def test_another_users_process_gets_nothing_through_my_tunnel(net: Sandbox,
                                                             runtime_dir: object,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    if os.geteuid() != 0:
        need("switching to another user needs root")
    from jupyter_tunnel.manager import TunnelManager
    from jupyter_tunnel.spec import build_spec

    manager = TunnelManager(ssh_config=str(net.ssh_config), owner="python")
    tunnel = manager.open(build_spec("beast via unicorn"))
    try:
        assert tunnel.url and tunnel.local_port
        mine = get_as(None, tunnel.local_port)
        # beast's Jupyter answers (403: no token sent), so the way through is open
        assert mine.stdout.startswith("HTTP/1.1 403"), (mine.stdout, mine.stderr)
        theirs = get_as(NOBODY, tunnel.local_port)
        assert theirs.returncode != 9, theirs.stderr  # it could connect...
        assert theirs.stdout == "", theirs.stdout  # ...and got no answer at all
        assert any(f"local port {tunnel.local_port} from a process of another user (uid "
                   f"{NOBODY})" in r.getMessage() for r in caplog.records)
        assert api_status(tunnel.url) == 200  # and the tunnel still works for its user
    finally:
        tunnel.close()
