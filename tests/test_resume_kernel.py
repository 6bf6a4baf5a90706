"""A notebook's kernel through a resumable tunnel (``--resume``): a cell printing a line a
second for 40 s goes on through a 20 s outage of the link to unicorn; every line arrives once,
in order, and the reply says ok, over the kernel websocket JupyterLab uses (without
``--resume`` that websocket closes and the lines of the outage are lost)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from typing import Any

import pytest
from conftest import need
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec
from jupyter_tunnel.tunnel import Tunnel

pytestmark = pytest.mark.network

LINES = 40  # as the user: a line a second for 40 s, the link cut for 20 s
CODE = (f"import time\nfor i in range({LINES}):\n"
        "    print('line', i, flush=True)\n    time.sleep(1)")


def _api(tunnel: Tunnel, net: Sandbox, method: str, path: str) -> Any:
    assert net.jupyter is not None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"http://127.0.0.1:{tunnel.local_port}/{path}", method=method,
                                 data=b"{}" if method == "POST" else None,
                                 headers={"Authorization": f"token {net.jupyter.token}"})
    with opener.open(req, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else None


def _message(session: str, code: str) -> dict[str, Any]:
    return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request",
                       "session": session, "username": "test", "version": "5.3",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}


async def _run_cell(url: str, token: str, on_line: Any) -> tuple[list[str], str]:
    """Execute CODE over the websocket; return the lines printed and the reply's status."""
    session = uuid.uuid4().hex
    ws = await websocket_connect(HTTPRequest(f"{url}?session_id={session}",
                                             headers={"Authorization": f"token {token}"},
                                             request_timeout=30))
    request = _message(session, CODE)
    await ws.write_message(json.dumps(request))
    lines: list[str] = []
    status = ""
    idle = False
    while not (status and idle):
        raw = await asyncio.wait_for(ws.read_message(), timeout=120)
        assert raw is not None, "the kernel websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            for line in msg["content"]["text"].splitlines():
                lines.append(line)
                await on_line(len(lines))
        elif kind == "execute_reply":
            status = msg["content"]["status"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    ws.close()
    return lines, status


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_a_cell_printing_through_an_outage_loses_no_line(net: Sandbox, backend: str) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    assert net.jupyter is not None
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend=backend, resume=True,
                            keepalive_interval=1, keepalive_count_max=2)
    with manager.open(build_spec("beast via unicorn")) as tunnel:
        kernel = _api(tunnel, net, "POST", "api/kernels")
        held_seen: list[int] = []

        async def on_line(count: int) -> None:
            if count != 4:
                return
            net.cut_link()  # a silent outage, as Wi-Fi gone
            try:
                deadline = time.monotonic() + 20
                while tunnel.state.value != "reconnecting" or not held_seen:
                    assert time.monotonic() < deadline, "the outage was not noticed"
                    held = (tunnel.to_dict()["resume"] or {}).get("held", 0)
                    if tunnel.state.value == "reconnecting" and held:
                        held_seen.append(held)
                    await asyncio.sleep(0.1)
                await asyncio.sleep(20)  # the kernel prints on meanwhile, held on beast
            finally:
                net.restore_link()

        url = f"ws://127.0.0.1:{tunnel.local_port}/api/kernels/{kernel['id']}/channels"
        try:
            lines, status = asyncio.run(_run_cell(url, net.jupyter.token, on_line))
        finally:
            _api(tunnel, net, "DELETE", f"api/kernels/{kernel['id']}")
        assert lines == [f"line {i}" for i in range(LINES)]
        assert status == "ok" and held_seen and tunnel.reconnects == 1
