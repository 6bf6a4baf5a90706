"""The server extension's REST API, on a real Jupyter server under a non-root base_url.

Requests go through the server as the panel sends them; tunnels go through the real test
network (laptop -> unicorn -> beast) and are checked by what answers through them.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import port_is_free
from test_open import api_status
from tornado.httpclient import HTTPClientError, HTTPResponse

from jupyter_tunnel import errors
from jupyter_tunnel.rest_errors import status_of
from jupyter_tunnel.rest_service import TunnelService, hop_allowed
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import Hop

pytest_plugins = ["pytest_jupyter.jupyter_server"]

BASE_URL = "/user/alice/"
API = ("jupyter-tunnel", "api")

# hosts that look like the test network's, for tests that must never connect anywhere
# (port 1 on loopback refuses at once if something were wrongly opened)
OFFLINE_SSH_CONFIG = """\
Host unicorn
  HostName 127.0.0.1
  Port 1
Host beast
  HostName 127.0.0.1
  Port 1
Host *.wild
  User nobody
Host sneaky
  HostName 127.0.0.1
  Port 1
  ProxyJump evil.example.com
"""


@pytest.fixture
def jp_base_url() -> str:
    return BASE_URL  # as under JupyterHub


@pytest.fixture
def server_extra() -> dict[str, Any]:
    """Extra server config; tests parametrize it."""
    return {}


@pytest.fixture
def tunnel_ssh_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The test network's ssh config for network tests, an offline one for the others."""
    if request.node.get_closest_marker("network"):
        net: Sandbox = request.getfixturevalue("net")
        return net.ssh_config
    path = tmp_path / "ssh_config"
    path.write_text(OFFLINE_SSH_CONFIG)
    return path


@pytest.fixture
def jp_server_config(tunnel_ssh_config: Path, server_extra: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_tunnel": True},
            "allow_unauthenticated_access": False,
        },
        "TunnelManager": {"ssh_config": str(tunnel_ssh_config)},
    }
    for section, values in server_extra.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def service(jp_serverapp: Any) -> TunnelService:
    found: TunnelService = jp_serverapp.web_app.settings["jupyter_tunnel_service"]
    return found


def registry_files(service: TunnelService) -> list[str]:
    folder = service.manager.registry.path
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


async def call(jp_fetch: Any, method: str, *path: str, body: Any = None,
               raw: bytes | None = None, headers: dict[str, str] | None = None,
               params: dict[str, str] | None = None) -> tuple[int, Any, HTTPResponse]:
    """A request to the API; (status, JSON body, response) for answers and errors alike."""
    kwargs: dict[str, Any] = {"method": method}
    if method in ("POST", "PUT"):
        kwargs["body"] = raw if raw is not None else json.dumps(body)
    try:
        response = await jp_fetch(*API, *path, headers=headers, params=params, **kwargs)
    except HTTPClientError as exc:
        assert exc.response is not None
        response = exc.response
    data = json.loads(response.body) if response.body else None
    return response.code, data, response


async def until(jp_fetch: Any, name: str, states: set[str], timeout: float = 40) -> dict[str, Any]:
    """Poll GET tunnels/NAME (as the panel does) until the tunnel is in one of ``states``."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        code, data, _ = await call(jp_fetch, "GET", "tunnels", name)
        assert code == 200, data
        if not seen or seen[-1] != data["state"]:
            seen.append(data["state"])
        if data["state"] in states:
            return dict(data)
        await asyncio.sleep(0.2)
    pytest.fail(f"tunnel {name} did not reach {states} within {timeout} s; states seen: {seen}")


async def status_through(url: str) -> int:
    return await asyncio.to_thread(api_status, url)


# --- through the test network ------------------------------------------------------------

@pytest.mark.network
async def test_open_list_get_close(jp_fetch: Any, jp_serverapp: Any, net: Sandbox,
                                   service: TunnelService) -> None:
    code, opened, response = await call(jp_fetch, "POST", "tunnels",
                                        body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, opened
    assert opened["name"] == "beast" and opened["owner"] == "server"
    assert opened["state"] in {"connecting", "detecting", "ready"}
    assert response.headers["Location"] == f"{BASE_URL}jupyter-tunnel/api/tunnels/beast"

    ready = await until(jp_fetch, "beast", {"ready", "failed"})
    assert ready["state"] == "ready", ready["error"]
    assert ready["hops"] == ["unicorn", "beast"] and ready["error"] is None
    assert net.jupyter is not None and ready["remote_port"] == net.jupyter.port
    assert await status_through(ready["url"]) == 200
    port = ready["local_port"]

    code, listed, _ = await call(jp_fetch, "GET", "tunnels")
    assert code == 200
    assert [(t["name"], t["state"], t["owner"], t["local_port"]) for t in listed] == [
        ("beast", "ready", "server", port)]
    assert registry_files(service) == ["beast.json"]

    # a second open of the same target gets the next free name
    code, again, _ = await call(jp_fetch, "POST", "tunnels",
                                body={"target": "beast", "via": "unicorn", "wait": True})
    assert code == 201 and again["name"] == "beast-2" and again["state"] == "ready", again
    assert await status_through(again["url"]) == 200
    # and a taken name is refused before anything connects
    code, taken, _ = await call(jp_fetch, "POST", "tunnels",
                                body={"target": "beast", "via": ["unicorn"], "name": "beast"})
    assert code == 409 and "already open" in taken["message"], taken

    for name, local in (("beast", port), ("beast-2", again["local_port"])):
        code, closed, _ = await call(jp_fetch, "DELETE", "tunnels", name)
        assert code == 200 and closed["state"] == "closed", closed
        assert port_is_free(local)
    code, missing, _ = await call(jp_fetch, "GET", "tunnels", "beast")
    assert code == 404 and "no tunnel named 'beast'" in missing["message"]
    assert (await call(jp_fetch, "GET", "tunnels"))[1] == []
    assert registry_files(service) == []


@pytest.mark.network
async def test_failed_open_stays_visible_until_deleted(jp_fetch: Any, net: Sandbox,
                                                       service: TunnelService) -> None:
    assert net.jupyter is not None
    body = {"target": "beast", "via": ["unicorn"], "remote_port": 1, "name": "wrong-port"}
    code, opened, _ = await call(jp_fetch, "POST", "tunnels", body=body)
    assert code == 201 and opened["name"] == "wrong-port"
    failed = await until(jp_fetch, "wrong-port", {"failed", "ready"})
    assert failed["state"] == "failed"
    expected = f"no running Jupyter server on beast listens on port 1 (running: {net.jupyter.port})"
    assert expected in failed["error"]["error"]
    assert failed["error"]["kind"] == "jupyter-not-found"
    listed = (await call(jp_fetch, "GET", "tunnels"))[1]
    assert [(t["name"], t["state"]) for t in listed] == [("wrong-port", "failed")]
    # nothing of it is left running: its record goes once its teardown (which follows the
    # state the API shows at once) is done
    deadline = time.monotonic() + 20
    while registry_files(service):
        assert time.monotonic() < deadline, registry_files(service)
        await asyncio.sleep(0.05)

    # waiting for the open gives the error as the answer: a hop's answer, so 502
    code, error, _ = await call(jp_fetch, "POST", "tunnels", body={**body, "wait": True})
    assert code == 502, error
    assert expected in error["message"] and error["kind"] == "jupyter-not-found"
    assert error["tunnel"]["state"] == "failed"
    assert net.jupyter.token not in json.dumps(error)

    code, dismissed, _ = await call(jp_fetch, "DELETE", "tunnels", "wrong-port")
    assert code == 200 and dismissed["state"] == "failed"
    assert (await call(jp_fetch, "GET", "tunnels"))[1] == []


@pytest.mark.network
async def test_server_stop_closes_its_tunnels(jp_fetch: Any, jp_serverapp: Any,
                                              service: TunnelService) -> None:
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"], "wait": True})
    assert code == 201 and opened["state"] == "ready", opened
    assert await status_through(opened["url"]) == 200
    # what the server does when it stops (Ctrl-C, or JupyterHub stopping it)
    await jp_serverapp.extension_manager.stop_all_extensions()
    assert port_is_free(opened["local_port"])
    assert registry_files(service) == []
    assert service.manager.tunnels() == []


@pytest.mark.network
async def test_cancel_while_opening(jp_fetch: Any, service: TunnelService) -> None:
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"]})
    assert code == 201 and opened["state"] != "ready"
    code, closed, _ = await call(jp_fetch, "DELETE", "tunnels", opened["name"])
    assert code == 200 and closed["state"] == "closed", closed
    await asyncio.sleep(3)  # the open, whatever it was doing, has ended by now
    assert (await call(jp_fetch, "GET", "tunnels"))[1] == []
    assert registry_files(service) == []
    assert service.manager.tunnels() == []


# --- who may ask ----------------------------------------------------------------------

ENDPOINTS = [("GET", "tunnels"), ("POST", "tunnels"), ("GET", "tunnels/beast"),
             ("DELETE", "tunnels/beast"), ("GET", "hosts")]


@pytest.mark.network
@pytest.mark.parametrize("authorization", ["", "token wrong-token"])
async def test_no_token_is_403_and_nothing_connects(jp_fetch: Any, service: TunnelService,
                                                    authorization: str) -> None:
    for method, path in ENDPOINTS:
        body = {"target": "beast", "via": ["unicorn"], "wait": True}
        code, data, _ = await call(jp_fetch, method, *path.split("/"), body=body,
                                   headers={"Authorization": authorization})
        assert code == 403, (method, path, data)
    assert registry_files(service) == []
    assert service.list() == []


async def test_post_from_cookie_session_needs_xsrf(jp_fetch: Any, jp_serverapp: Any,
                                                   service: TunnelService) -> None:
    token = jp_serverapp.identity_provider.token
    # the browser's first request carries the token; the server answers with a login cookie
    code, _, response = await call(jp_fetch, "GET", "hosts", params={"token": token},
                                   headers={"Authorization": ""})
    assert code == 200
    login = [c.split(";")[0] for c in response.headers.get_list("Set-Cookie")
             if c.startswith("username-")]
    assert login, response.headers
    cookie = {"Authorization": "", "Cookie": login[0]}
    code, listed, _ = await call(jp_fetch, "GET", "tunnels", headers=cookie)
    assert (code, listed) == (200, [])

    body = {"target": "beast", "via": ["unicorn"]}
    code, refused, _ = await call(jp_fetch, "POST", "tunnels", body=body, headers=cookie)
    assert code == 403, refused
    assert "_xsrf" in refused["message"]
    code, _, _ = await call(jp_fetch, "DELETE", "tunnels", "beast", headers=cookie)
    assert code == 403
    assert registry_files(service) == [] and service.list() == []

    # with the XSRF cookie and header, as JupyterLab sends them, it gets through to the API
    xsrf = {**cookie, "Cookie": f"{login[0]}; _xsrf=0123abcd", "X-XSRFToken": "0123abcd"}
    code, answer, _ = await call(jp_fetch, "POST", "tunnels", body={"via": ["unicorn"]},
                                 headers=xsrf)
    assert code == 400 and "'target' is required" in answer["message"], answer


async def test_served_only_under_base_url(jp_serverapp: Any, http_server_client: Any,
                                          jp_auth_header: dict[str, str]) -> None:
    with pytest.raises(HTTPClientError) as info:
        await http_server_client.fetch("/jupyter-tunnel/api/tunnels", headers=jp_auth_header)
    assert info.value.code == 404
    response = await http_server_client.fetch(f"{BASE_URL}jupyter-tunnel/api/tunnels",
                                              headers=jp_auth_header)
    assert response.code == 200 and json.loads(response.body) == []


# --- what may be asked ------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "the request body is not JSON"),
    (b"[]", "must be a JSON object"),
    (b"{}", "'target' is required"),
    (b'{"target": "-oProxyCommand=sh"}', "cannot start with '-'"),
    (b'{"target": "beast", "ssh_options": ["-oProxyCommand=sh"]}', "unknown field 'ssh_options'"),
    (b'{"target": "beast", "ssh_config": "/tmp/evil"}', "unknown field 'ssh_config'"),
    (b'{"target": "beast", "command": "id"}', "unknown field 'command'"),
    (b'{"target": "beast", "via": "uni corn"}', "white space"),
    (b'{"target": "beast", "via": [1]}', "'via' must be a list of jump host names"),
    (b'{"target": "beast", "local_port": 70000}', "local port must be a number from 1 to 65535"),
    (b'{"target": "beast", "local_port": true}', "'local_port' must be a port number"),
    (b'{"target": "beast", "remote_port": "80; id"}', "remote port must be a number"),
    (b'{"target": "beast", "name": "../etc"}', "invalid tunnel name '../etc'"),
    (b'{"target": "beast", "launch": "yes"}', "'launch' must be true or false"),
    (b'{"target": "beast via"}', "'via' must be followed by a host name"),
])
async def test_bad_bodies_are_400_with_the_reason(jp_fetch: Any, service: TunnelService,
                                                  raw: bytes, reason: str) -> None:
    code, error, _ = await call(jp_fetch, "POST", "tunnels", raw=raw)
    assert code == 400, error
    assert reason in error["message"] and error["kind"] == "bad-request", error
    assert registry_files(service) == [] and service.list() == []


async def test_bad_and_unknown_names(jp_fetch: Any) -> None:
    code, error, _ = await call(jp_fetch, "GET", "tunnels", "-x")
    assert code == 400 and "invalid tunnel name '-x'" in error["message"]
    code, error, _ = await call(jp_fetch, "DELETE", "tunnels", "nothing")
    assert code == 404 and "no tunnel named 'nothing'" in error["message"]


async def test_target_outside_the_ssh_config_is_403(jp_fetch: Any, service: TunnelService) -> None:
    for body, hop in [({"target": "elsewhere"}, "elsewhere"),
                      ({"target": "beast", "via": ["unicorn", "gate.wild"]}, "gate.wild"),
                      ({"target": "127.0.0.1"}, "127.0.0.1")]:
        code, error, _ = await call(jp_fetch, "POST", "tunnels", body=body)
        assert code == 403, error
        assert error["message"].startswith(f"{hop} is not allowed: this server reaches only "
                                           "the hosts of its ssh config")
        assert error["kind"] == "not-allowed" and error["hop"] == hop
    assert registry_files(service) == [] and service.list() == []


@pytest.mark.parametrize("server_extra", [{"TunnelExtensionApp": {"allowed_targets": ["unicorn"]}}])
async def test_operator_list_of_allowed_targets(jp_fetch: Any, service: TunnelService) -> None:
    code, error, _ = await call(jp_fetch, "POST", "tunnels",
                                body={"target": "beast", "via": ["unicorn"]})
    assert code == 403, error
    assert error["message"] == ("beast is not allowed: this server reaches only unicorn "
                                "(TunnelExtensionApp.allowed_targets)")
    code, hosts, _ = await call(jp_fetch, "GET", "hosts")
    assert (code, hosts) == (200, {"hosts": ["unicorn"]})
    assert service.list() == []


@pytest.mark.parametrize("server_extra",
                         [{"TunnelExtensionApp": {"allowed_targets": ["sneaky", "unicorn"]}}])
async def test_proxyjump_in_the_ssh_config_cannot_bring_in_another_host(
        jp_fetch: Any, service: TunnelService) -> None:
    code, error, _ = await call(jp_fetch, "POST", "tunnels", body={"target": "sneaky"})
    assert code == 403, error
    assert error["message"].startswith("evil.example.com (a jump host of sneaky in the ssh "
                                       "config) is not allowed")
    assert registry_files(service) == [] and service.list() == []


from jupyter_server.auth.authorizer import Authorizer  # noqa: E402


class ViewerAuthorizer(Authorizer):
    """Lets a user read and write but not execute (a viewer's role, say)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return action != "execute"


@pytest.mark.network
@pytest.mark.parametrize("server_extra", [{"ServerApp": {
    "authorizer_class": "test_rest.ViewerAuthorizer"}}])
async def test_a_viewer_sees_tunnels_but_no_tokens_and_cannot_open(
        jp_fetch: Any, service: TunnelService, net: Sandbox) -> None:
    from jupyter_tunnel.manager import TunnelManager
    from jupyter_tunnel.spec import build_spec

    own = TunnelManager(ssh_config=str(net.ssh_config), registry_dir=str(
        service.manager.registry.path))
    with own.open(build_spec("beast via unicorn", name="mine")) as tunnel:
        assert tunnel.url is not None and "?token=" in tunnel.url
        code, listed, _ = await call(jp_fetch, "GET", "tunnels")
        assert code == 200 and [r["name"] for r in listed] == ["mine"]
        assert listed[0]["url"] == tunnel.url.split("?", 1)[0]
        code, one, _ = await call(jp_fetch, "GET", "tunnels", "mine")
        assert code == 200 and "token" not in (one["url"] or "")
        code, error, _ = await call(jp_fetch, "POST", "tunnels", body={"target": "beast"})
        assert code == 403, error
    assert registry_files(service) == []


class DenyAuthorizer(Authorizer):
    """Authenticated, but allowed nothing on this extension's resource."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "jupyter_tunnel"


@pytest.mark.parametrize("server_extra", [{"ServerApp": {
    "authorizer_class": "test_rest.DenyAuthorizer"}}])
async def test_every_endpoint_asks_the_authorizer(jp_fetch: Any, service: TunnelService) -> None:
    for method, path, body in [("GET", ("tunnels",), None), ("GET", ("tunnels", "x"), None),
                               ("DELETE", ("tunnels", "x"), None), ("GET", ("hosts",), None),
                               ("POST", ("tunnels",), {"target": "beast"}),
                               ("POST", ("tunnels", "x", "answer"),
                                {"id": "0123abcd", "answer": "1"})]:
        code, error, _ = await call(jp_fetch, method, *path, body=body)
        assert code == 403, (method, path, error)
    assert registry_files(service) == []


@pytest.fixture
def tunnel_config_py(jp_config_dir: Path) -> Path:
    """A jupyter_tunnel_config.py, the file the `jupyter tunnel` command reads too."""
    path = jp_config_dir / "jupyter_tunnel_config.py"
    path.write_text("c.TunnelManager.connect_timeout = 3.5\n"
                    "c.TunnelExtensionApp.allowed_targets = ['beast']\n")
    return path


async def test_jupyter_tunnel_config_py_configures_the_server(
        tunnel_config_py: Path, jp_fetch: Any, service: TunnelService) -> None:
    assert service.manager.connect_timeout == 3.5
    assert service.manager.owner == "server"
    code, hosts, _ = await call(jp_fetch, "GET", "hosts")
    assert (code, hosts) == (200, {"hosts": ["beast"]})


async def test_hosts_are_the_concrete_hosts_of_the_ssh_config(jp_fetch: Any) -> None:
    code, hosts, _ = await call(jp_fetch, "GET", "hosts")
    assert (code, hosts) == (200, {"hosts": ["unicorn", "beast", "sneaky"]})


# --- pure rules --------------------------------------------------------------------------

def test_hop_rules() -> None:
    config = ["beast", "unicorn"]
    assert hop_allowed(Hop("beast"), None, config)
    assert hop_allowed(Hop("BEAST"), None, config)
    assert hop_allowed(Hop("gpu7", user="alice"), None, config)  # explicit user@host
    assert not hop_allowed(Hop("gpu7"), None, config)
    patterns = ["gpu*", "alice@login.example.org"]
    assert hop_allowed(Hop("gpu7"), patterns, config)
    assert not hop_allowed(Hop("beast"), patterns, config)
    assert hop_allowed(Hop("login.example.org", user="alice"), patterns, config)
    assert not hop_allowed(Hop("login.example.org", user="bob"), patterns, config)
    assert not hop_allowed(Hop("login.example.org"), patterns, config)
    assert not hop_allowed(Hop("beast"), [], config)


def test_one_status_per_error() -> None:
    assert status_of(errors.SpecError("x")) == 400
    assert status_of(errors.ConfigError("x")) == 400
    assert status_of(errors.TunnelNotFound("x")) == 404
    assert status_of(errors.TunnelExists("x")) == 409
    assert status_of(errors.PortInUse("x")) == 409
    assert status_of(errors.HostKeyError("x")) == 502
    assert status_of(errors.AuthError("x")) == 502
    assert status_of(errors.HopUnreachable("x")) == 502
    assert status_of(errors.ForwardingRefused("x")) == 502
    assert status_of(errors.RemoteJupyterNotFound("x")) == 502
    assert status_of(errors.HopTimeout("x")) == 504
    assert status_of(errors.RemoteJupyterNotReady("x")) == 504
    assert status_of(errors.TunnelError("x")) == 500


def test_every_handler_is_authenticated_and_authorized() -> None:
    from jupyter_tunnel.handlers import AUTH_RESOURCE, default_handlers

    for _pattern, handler in default_handlers:
        assert handler.auth_resource == AUTH_RESOURCE
        for method in ("get", "post", "delete", "put", "patch"):
            fn = handler.__dict__.get(method)
            if fn is None:
                continue
            # @web.authenticated wraps @authorized wraps the method
            assert fn.__wrapped__.__wrapped__.__name__ == method, (handler, method)
