"""A tunnel's local port serves only its own user: another local user's process that
connects is closed before anything is forwarded (jupyter_tunnel/peers.py)."""

from __future__ import annotations

import os
import socket
import subprocess

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


def test_a_connection_of_my_own_is_mine() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()):
        conn, _ = server.accept()
        with conn:
            assert peers.peer_uid(conn) == os.geteuid()
            assert peers.may_use(conn)


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
