"""A launched remote JupyterLab served through the user's own Jupyter server (as under
JupyterHub, where the browser cannot reach 127.0.0.1 of the server's machine).

A real Jupyter server under a non-root base_url with the extension opens a tunnel to beast
through unicorn with launch; the remote server it starts gets the base URL
``/user/alice/jupyter-tunnel/lab/beast/``, and that path of the local server answers from
beast: HTTP, and a kernel's websocket that runs code in beast's network namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launched import end_launched, launched_pids
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from jupyter_tunnel.rest_service import TunnelService
from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["pytest_jupyter.jupyter_server"]

BASE_URL = "/user/alice/"
SERVED = f"{BASE_URL}jupyter-tunnel/lab/beast/"
LAB = ("jupyter-tunnel", "lab")
API = ("jupyter-tunnel", "api")


@pytest.fixture
def jp_base_url() -> str:
    return BASE_URL  # as under JupyterHub


@pytest.fixture
def jp_server_config(net: Sandbox) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_tunnel": True},
                      "allow_unauthenticated_access": False},
        "TunnelManager": {"ssh_config": str(net.ssh_config), "launch_timeout": 90.0},
    }


@pytest.fixture
def service(jp_serverapp: Any) -> TunnelService:
    found: TunnelService = jp_serverapp.web_app.settings["jupyter_tunnel_service"]
    return found


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the server's kernels)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def no_launched_left(net: Sandbox) -> Iterator[None]:
    """Stop the servers the test's launches left on beast (closing a tunnel leaves them)."""
    yield
    end_launched(net, SERVED)


async def fetch(jp_fetch: Any, *parts: str, method: str = "GET", body: Any = None,
                headers: dict[str, str] | None = None) -> HTTPResponse:
    """A request to this server; the answer whatever its status."""
    kwargs: dict[str, Any] = {"method": method, "follow_redirects": False,
                              "request_timeout": 60}
    if body is not None:
        kwargs["body"] = body
    try:
        response: HTTPResponse = await jp_fetch(*parts, headers=headers, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None
        response = exc.response
    return response


async def until_state(jp_fetch: Any, name: str, states: set[str],
                      timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await fetch(jp_fetch, *API, "tunnels", name)
        data = json.loads(response.body)
        if data["state"] in states:
            return data
        await asyncio.sleep(0.3)
    pytest.fail(f"tunnel {name} did not reach {states} within {timeout} s: {data}")


def execute_request(code: str, session: str) -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    return msg_id, json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": session,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}})


async def run_code(ws: Any, code: str) -> str:
    """Run ``code`` through a kernel websocket (JSON protocol); what it printed."""
    msg_id, message = execute_request(code, uuid.uuid4().hex)
    await ws.write_message(message)
    printed = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(ws.read_message(), 60)
        assert raw is not None, "the websocket closed"
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            printed.append(msg["content"]["text"])
        elif kind == "error":
            pytest.fail(f"the code failed: {msg['content']}")
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(printed)
    pytest.fail("no answer from the kernel within 60 s")


NETNS = "import os; print(os.stat('/proc/self/ns/net').st_ino)"


@pytest.mark.network
async def test_a_launched_lab_is_served_here(
        jp_fetch: Any, jp_ws_fetch: Any, jp_http_port: int, net: Sandbox,
        service: TunnelService, no_launched_left: None) -> None:
    assert net.jupyter is not None  # a server with base URL / runs there too: launch anyway
    marker = f"served-{secrets.token_hex(4)}.txt"
    (net.home("beast") / marker).write_text("from beast\n")
    answers: list[HTTPResponse] = []
    try:
        response = await fetch(jp_fetch, *API, "tunnels", method="POST", body=json.dumps(
            {"target": "beast", "via": ["unicorn"], "launch": True}))
        assert response.code == 201, response.body
        opened = await until_state(jp_fetch, "beast", {"ready", "failed"})
        assert opened["state"] == "ready", opened
        assert opened["remote_base_url"] == SERVED
        assert (opened["served_url"], opened["served_why"]) == (SERVED + "lab", "")
        listed = json.loads((await fetch(jp_fetch, *API, "tunnels")).body)
        assert [t["served_url"] for t in listed if t["name"] == "beast"] == [SERVED + "lab"]
        tunnel = service.manager.get("beast")
        assert tunnel.remote is not None and tunnel.local_port is not None
        token = tunnel.remote.token
        assert token and tunnel.remote.pid in launched_pids(net, SERVED)

        # HTTP: api/status and beast's home, answered by beast
        status = await fetch(jp_fetch, *LAB, "beast", "api", "status")
        answers.append(status)
        assert status.code == 200, status.body
        assert "started" in json.loads(status.body)
        contents = await fetch(jp_fetch, *LAB, "beast", "api", "contents")
        answers.append(contents)
        assert contents.code == 200
        assert marker in [item["name"] for item in json.loads(contents.body)["content"]]
        page = await fetch(jp_fetch, *LAB, "beast", "lab")
        answers.append(page)
        assert page.code == 200 and b"jupyter-config-data" in page.body
        assert SERVED.encode() in page.body  # its pages name their URLs under the served path
        # JupyterLab writes its server's token into the page config: emptied here, so the
        # page's script authenticates with this server's login instead
        config = page.body.split(b'id="jupyter-config-data"', 1)[1].split(b">", 1)[1]
        assert json.loads(config.split(b"</script>", 1)[0])["token"] == ""

        # the remote server's own cookie (set for its token login) never reaches the browser
        direct = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{tunnel.local_port}{SERVED}api/status",
            headers={"Authorization": f"token {token}"})
        remote_cookies = {c.split("=", 1)[0] for c in direct.headers.get_list("Set-Cookie")}
        assert remote_cookies, "the remote server set no cookie: the check below proves nothing"
        for answer in answers:
            names = {c.split("=", 1)[0] for c in answer.headers.get_list("Set-Cookie")}
            assert not names & remote_cookies, answer.headers

        # a kernel on beast, and its websocket through this server
        started = await fetch(jp_fetch, *LAB, "beast", "api", "kernels", method="POST",
                              body=json.dumps({"name": "python3"}))
        answers.append(started)
        assert started.code == 201, started.body
        kernel_id = json.loads(started.body)["id"]
        ws = await jp_ws_fetch(*LAB, "beast", "api", "kernels", kernel_id, "channels")
        try:
            printed = await run_code(ws, NETNS)
        finally:
            ws.close()
        beast_ns = net.run_in("beast", [sys.executable, "-c", NETNS], capture_output=True,
                              text=True).stdout.strip()
        assert printed.strip() == beast_ns
        if net.netns:
            assert beast_ns != str(os.stat("/proc/self/ns/net").st_ino)
        kernel_pids = children(tunnel.remote.pid)
        assert kernel_pids, "the kernel is not a child of the launched server"

        # JupyterLab 4 asks for the v1 kernel protocol: the remote server's choice comes back
        v1 = "v1.kernel.websocket.jupyter.org"
        ws = await jp_ws_fetch(*LAB, "beast", "api", "kernels", kernel_id, "channels",
                               subprotocols=[v1])
        assert ws.selected_subprotocol == v1
        ws.close()

        for answer in answers:
            assert token.encode() not in answer.body
            assert token not in str(answer.headers)

        # not signed in: refused; an unknown name: 404
        anonymous = await AsyncHTTPClient().fetch(
            f"http://localhost:{jp_http_port}{SERVED}api/status", raise_error=False,
            follow_redirects=False)
        # a page: to the login, as any page of this server; a websocket: refused
        assert anonymous.code == 302, anonymous.code
        assert "/login" in anonymous.headers["Location"]
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(
                f"ws://localhost:{jp_http_port}{SERVED}api/kernels/{kernel_id}/channels"))
        assert refused.value.code == 403
        unknown = await fetch(jp_fetch, *LAB, "nosuch", "api", "status")
        assert unknown.code == 404
        assert json.loads(unknown.body)["message"] == \
            "no tunnel named 'nosuch' is open in this Jupyter server"

        # a server that was not launched for it (base URL /) cannot be served: 409 and why
        response = await fetch(jp_fetch, *API, "tunnels", method="POST", body=json.dumps(
            {"target": "beast", "via": ["unicorn"], "name": "plain",
             "remote_port": net.jupyter.port}))
        assert response.code == 201, response.body
        plain = await until_state(jp_fetch, "plain", {"ready", "failed"})
        assert plain["state"] == "ready", plain
        why = (f"beast's Jupyter runs at base URL / and cannot be served under "
               f"{BASE_URL}jupyter-tunnel/lab/plain/; open it with 'Start JupyterLab there' "
               "(launch) to have one that can")
        assert (plain["served_url"], plain["served_why"]) == (None, why)
        refused_plain = await fetch(jp_fetch, *LAB, "plain", "api", "status")
        assert refused_plain.code == 409
        assert json.loads(refused_plain.body)["message"] == why
        assert net.jupyter.token.encode() not in refused_plain.body
        await fetch(jp_fetch, *API, "tunnels", "plain", method="DELETE")

        # closed: the path is gone
        closed = await fetch(jp_fetch, *API, "tunnels", "beast", method="DELETE")
        assert closed.code == 200
        gone = await fetch(jp_fetch, *LAB, "beast", "api", "status")
        assert gone.code == 404
        # what close does today with the server it launched: it leaves it (and its kernel)
        # running on beast, as for the CLI's --launch
        assert tunnel.remote.pid in launched_pids(net, SERVED)
        assert set(kernel_pids) <= set(children(tunnel.remote.pid))
    finally:
        (net.home("beast") / marker).unlink(missing_ok=True)
        for name in ("beast", "plain"):
            await fetch(jp_fetch, *API, "tunnels", name, method="DELETE")
