"""The pure rules of serving a remote JupyterLab here, the base URL a launch passes on, and
the launch script itself run by a real ``sh`` with a stand-in ``jupyter``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_tunnel import detect
from jupyter_tunnel.errors import SpecError
from jupyter_tunnel.serve_rules import (
    downstream_headers,
    serve_prefix,
    served,
    upstream_headers,
    upstream_query,
    without_token,
)
from jupyter_tunnel.spec import TunnelSpec, check_base_url, parse_hop

PREFIX = "/user/alice/jupyter-tunnel/lab/"


@pytest.mark.parametrize("url", ["/a/", "/user/alice/jupyter-tunnel/lab/beast-2/",
                                 "/x.y_z~1/", "/user/a-b/c/"])
def test_good_base_urls(url: str) -> None:
    assert check_base_url(url) == url


@pytest.mark.parametrize("url", ["/", "", "a/", "/a", "/a b/", "/a;rm -rf/", "/$(id)/",
                                 "/a//b/", "/../", "/a/./", "/a'b/", '/a"/', "/a\n/", "/%2e/",
                                 "/" + "a" * 600 + "/"])
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(SpecError, match="invalid base URL"):
        check_base_url(url)


def test_serve_prefix() -> None:
    assert serve_prefix("/user/alice/") == PREFIX
    assert serve_prefix("/") == "/jupyter-tunnel/lab/"
    assert serve_prefix("/user/al ice/") is None  # cannot be a launched server's base URL


def test_the_wanted_base_url_only_with_launch() -> None:
    spec = TunnelSpec(parse_hop("beast"), launch=True, serve_under=PREFIX)
    assert spec.base_url_for("beast-2") == PREFIX + "beast-2/"
    assert TunnelSpec(parse_hop("beast"), serve_under=PREFIX).base_url_for("beast") is None
    assert TunnelSpec(parse_hop("beast"), launch=True).base_url_for("beast") is None


def record(**kw: Any) -> dict[str, Any]:
    return {"name": "beast", "target": "beast", "jupyter": True, "state": "ready",
            "owner": "server", "pid": 7, "remote_base_url": PREFIX + "beast/", **kw}


def test_served_and_why_not() -> None:
    assert served(record(), PREFIX, own=True) == (PREFIX + "beast/lab", "")
    url, why = served(record(remote_base_url="/"), PREFIX, own=True)
    assert url is None
    assert why == (f"beast's Jupyter runs at base URL / and cannot be served under "
                   f"{PREFIX}beast/; open it with 'Start JupyterLab there' (launch) to have "
                   "one that can")
    assert "another process (cli, pid 7)" in served(record(owner="cli"), PREFIX, own=False)[1]
    assert served(record(jupyter=False), PREFIX, own=True) == \
        (None, "it forwards no Jupyter server")
    assert served(record(remote_base_url=None, state="connecting"), PREFIX, True)[0] is None
    assert served(record(), None, own=True)[0] is None
    # another tunnel's base URL is not this one's
    assert served(record(name="beast-2"), PREFIX, own=True)[0] is None


def test_upstream_headers_drop_the_browsers_credentials() -> None:
    sent = upstream_headers([
        ("Cookie", "_xsrf=1; username-localhost-8888=secret"), ("Authorization", "token local"),
        ("X-XSRFToken", "1"), ("Host", "hub.example.org"), ("Origin", "https://hub"),
        ("Referer", "https://hub/x"), ("Connection", "keep-alive"), ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "k"), ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("Content-Length", "3"), ("Accept-Encoding", "br"),
        ("Content-Type", "application/json"), ("Accept", "*/*"), ("X-Custom", "kept"),
    ], "REMOTE")
    assert sent == [("Content-Type", "application/json"), ("Accept", "*/*"),
                    ("X-Custom", "kept"), ("Authorization", "token REMOTE")]
    assert ("Authorization", "token ") not in upstream_headers([], "")
    assert upstream_headers([], "") == []


def test_downstream_headers_drop_remote_cookies() -> None:
    passed = downstream_headers([
        ("Set-Cookie", "username-127-0-0-1-8888=x"), ("set-cookie", "_xsrf=2"),
        ("Content-Length", "10"), ("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked"),
        ("Connection", "close"), ("Content-Type", "text/html"), ("Location", "/a/lab"),
        ("Content-Security-Policy", "frame-ancestors 'self'"),
    ])
    assert passed == [("Content-Type", "text/html"), ("Location", "/a/lab"),
                      ("Content-Security-Policy", "frame-ancestors 'self'")]




# find_server with a wanted base URL, on a stand-in remote ------------------------------
class Remote:
    """Answers the detect scripts: a list of servers; a launch adds one."""

    def __init__(self, servers: list[dict[str, Any]]) -> None:
        self.servers = servers
        self.launched: list[tuple[str, ...]] = []

    def __call__(self, script: str, *args: str) -> tuple[int, str, str]:
        if script == detect.DISCOVER_SCRIPT:
            out = "".join(f"\n{detect.MARK} 1 {s['pid']} /rt/jpserver-{s['pid']}.json\n"
                          f"{json.dumps(s)}" for s in self.servers)
            return 0, out, ""
        if script == detect.LAUNCH_SCRIPT:
            self.launched.append(args)
            base = args[0] if args else "/"
            self.servers.append({"pid": 900, "port": 8890, "base_url": base, "token": "t"})
            return 0, "started 900\n", ""
        return 0, "", ""  # LAUNCH_CHECK_SCRIPT: still running


def server(pid: int, base: str = "/") -> dict[str, Any]:
    return {"pid": pid, "port": 8000 + pid, "base_url": base, "token": "t"}


def find(remote: Remote, base_url: str | None, launch: bool = True) -> detect.RemoteServer:
    return detect.find_server(remote, "beast", None, launch=launch, launch_timeout=5,
                              base_url=base_url)


def test_a_wanted_base_url_launches_even_when_others_run() -> None:
    remote = Remote([server(1), server(2)])
    found = find(remote, PREFIX + "beast/")
    assert (found.pid, found.base_url) == (900, PREFIX + "beast/")
    assert remote.launched == [(PREFIX + "beast/",)]


def test_a_live_server_with_the_base_url_is_taken() -> None:
    remote = Remote([server(1), server(2, PREFIX + "beast/"), server(3)])
    assert find(remote, PREFIX + "beast/").pid == 2
    assert remote.launched == []


def test_without_launch_the_usual_choice() -> None:
    remote = Remote([server(1), server(3)])
    assert find(remote, PREFIX + "beast/", launch=False).pid == 3
    assert remote.launched == []
    remote = Remote([])
    find(remote, None)  # nothing runs: launch as before, with no base URL
    assert remote.launched == [()]


def test_a_bad_base_url_never_reaches_the_remote() -> None:
    remote = Remote([server(1)])
    with pytest.raises(SpecError):
        find(remote, "/a;reboot/")
    assert remote.launched == []


# the launch script, run by sh with a stand-in jupyter that records its arguments ----------
def launch_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    home, bindir = tmp_path / "home", tmp_path / "bin"
    home.mkdir(exist_ok=True)
    bindir.mkdir(exist_ok=True)
    argv_file = tmp_path / "argv"
    fake = bindir / "jupyter"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {argv_file}\n')
    fake.chmod(0o755)
    (home / ".profile").write_text(f'PATH={bindir}:"$PATH"\nexport PATH\n')  # as a venv's
    env = {"HOME": str(home), "PATH": f"{bindir}:/usr/bin:/bin", "SHELL": "/bin/sh"}
    done = subprocess.run(["sh", "-s", "--", *args], input=detect.LAUNCH_SCRIPT, env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    return done, argv_file


def recorded(argv_file: Path) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if argv_file.exists() and argv_file.read_text().endswith("\n"):
            return argv_file.read_text().splitlines()
        time.sleep(0.05)
    pytest.fail("the stand-in jupyter was not started")


def test_launch_script_passes_the_base_url(tmp_path: Path) -> None:
    done, argv_file = launch_script(tmp_path, PREFIX + "beast/")
    assert done.returncode == 0 and done.stdout.startswith("started "), done
    assert recorded(argv_file) == ["server", "--no-browser", "--ip=127.0.0.1",
                                   f"--ServerApp.base_url={PREFIX}beast/"]


def test_launch_script_without_a_base_url(tmp_path: Path) -> None:
    done, argv_file = launch_script(tmp_path)
    assert done.returncode == 0, done
    assert recorded(argv_file) == ["server", "--no-browser", "--ip=127.0.0.1"]


@pytest.mark.parametrize("bad", ["/a b/", "/$(touch x)/", "/a'/", "relative/", "/a//b/"])
def test_launch_script_refuses_a_bad_base_url(tmp_path: Path, bad: str) -> None:
    done, argv_file = launch_script(tmp_path, bad)
    assert done.returncode == 2 and "invalid base URL" in done.stderr
    assert not argv_file.exists()
    assert not (tmp_path / "home" / ".cache").exists()  # refused before doing anything
    assert not os.path.exists(tmp_path / "x")


def test_the_remote_token_is_taken_out_of_a_page_config_only() -> None:
    page = b'<script id="jupyter-config-data">{"baseUrl": "/x/", "token": "abc123"}</script>'
    assert without_token(page, "text/html; charset=UTF-8", "abc123") == \
        b'<script id="jupyter-config-data">{"baseUrl": "/x/", "token": ""}</script>'
    assert without_token(page, "application/json", "abc123") == page  # a file: as it is
    assert without_token(b'{"note": "abc123"}', "text/html", "abc123") == b'{"note": "abc123"}'
    assert without_token(page, "text/html", "") == page


def test_this_servers_credentials_stay_out_of_the_upstream_query() -> None:
    assert upstream_query("token=mine&path=a%20b&_xsrf=x&format=json") == \
        "path=a%20b&format=json"
    assert upstream_query("to%6Ben=mine") == ""  # however it is spelled
    assert upstream_query("") == ""
    assert upstream_query("tokens=1&x") == "tokens=1&x"
