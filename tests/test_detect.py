"""Parsing what the remote discovery script prints, and choosing a server (pure logic)."""

from __future__ import annotations

import json

import pytest

from jupyter_tunnel.detect import MARK, RemoteServer, choose, local_url, parse_discovery
from jupyter_tunnel.errors import RemoteJupyterNotFound


def entry(alive: int, mtime: int, info: dict[str, object]) -> str:
    return f"\n{MARK} {alive} {mtime} /home/u/.local/share/jupyter/runtime/jpserver-1.json\n" + \
        json.dumps(info)


def test_parse_and_choose_newest_live() -> None:
    out = "motd noise\n" + entry(1, 100, {"port": 8888, "pid": 11, "token": "t1",
                                        "base_url": "/user/alice", "hostname": "0.0.0.0"}) \
        + entry(1, 200, {"port": 8890, "pid": 12, "token": "t2", "secure": True}) \
        + entry(0, 300, {"port": 8891, "pid": 13, "token": "t3"}) \
        + entry(1, 400, {"port": 0, "pid": 14, "sock": "/tmp/j.sock"}) \
        + f"\n{MARK} 1 500 /x\n{{not json"
    servers = parse_discovery(out)
    assert [(s.port, s.alive) for s in servers] == [(8888, True), (8890, True), (8891, False)]
    assert servers[0].base_url == "/user/alice/" and servers[0].forward_host == "127.0.0.1"
    best = choose(servers, "beast", None)
    assert best.port == 8890
    assert local_url(best, 4000) == "https://127.0.0.1:4000/lab?token=t2"
    assert choose(servers, "beast", 8888).token == "t1"
    assert "t1" not in repr(servers[0])


def test_choose_errors_name_the_host() -> None:
    stale = [RemoteServer(port=8891, pid=13, alive=False, mtime=1)]
    with pytest.raises(RemoteJupyterNotFound) as info:
        choose(stale, "beast", None)
    assert "no running Jupyter server found on beast" in str(info.value)
    assert "1 stale runtime file" in str(info.value) and info.value.hop == "beast"
    live = [RemoteServer(port=8888, pid=1, alive=True, mtime=1)]
    with pytest.raises(RemoteJupyterNotFound, match=r"port 9999 \(running: 8888\)"):
        choose(live, "beast", 9999)
