"""Remote kernels through the REST API (the panel's "Use beast's kernels here"), on a real
Jupyter server under a non-root base_url with the extension: install beast's kernelspecs
through unicorn, list them, remove them; bad requests, foreign kernelspecs, targets outside
allowed_targets and users without the right are refused before anything connects.

The server's JUPYTER_DATA_DIR is pytest-jupyter's temporary one (``jp_data_dir``): nothing
lands in the real user's kernelspecs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_rest import OFFLINE_SSH_CONFIG, call

from jupyter_tunnel.rest_service import TunnelService
from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["pytest_jupyter.jupyter_server"]

BASE_URL = "/user/alice/"


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


def kernel_dirs(data_dir: Path) -> list[str]:
    folder = data_dir / "kernels"
    return sorted(os.listdir(folder)) if folder.exists() else []


def beast_kernel_files(net: Sandbox) -> list[str]:
    folder = net.home("beast") / ".cache" / "jupyter_tunnel" / "kernels"
    return sorted(os.listdir(folder)) if folder.exists() else []


# --- through the test network ------------------------------------------------------------

@pytest.mark.network
async def test_install_list_remove(jp_fetch: Any, jp_data_dir: Path, net: Sandbox,
                                   service: TunnelService) -> None:
    assert os.environ["JUPYTER_DATA_DIR"] == str(jp_data_dir)  # never the user's own
    code, listed, _ = await call(jp_fetch, "GET", "kernels")
    assert (code, listed) == (200, {"installed": [], "running": []})

    code, done, _ = await call(jp_fetch, "POST", "kernels",
                               body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, done
    assert done == {"installed": [{"name": "beast-python3",
                                   "display_name": "Python 3 (ipykernel) on beast",
                                   "remote_kernel": "python3", "target": "beast",
                                   "via": ["unicorn"]}]}
    spec = json.loads((jp_data_dir / "kernels" / "beast-python3" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"] == {
        "target": "beast", "via": ["unicorn"], "remote_kernel": "python3",
        "ssh_config": str(net.ssh_config)}
    # the tunnel the install opened to ask beast is closed again
    assert (await call(jp_fetch, "GET", "tunnels"))[1] == []
    assert service.manager.tunnels() == []

    code, listed, _ = await call(jp_fetch, "GET", "kernels")
    assert code == 200 and listed["running"] == []
    assert listed["installed"] == done["installed"]
    # Jupyter's own kernelspec API sees it: the launcher and the kernel picker show it
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
    assert specs["beast-python3"]["spec"]["display_name"] == "Python 3 (ipykernel) on beast"

    # a kernel beast does not have is named in the refusal, and nothing is written
    code, error, _ = await call(jp_fetch, "POST", "kernels",
                                body={"target": "beast", "via": ["unicorn"],
                                      "kernels": ["nope"]})
    assert code == 400, error
    assert error["message"] == "beast has no kernel 'nope': it offers python3"
    # the phrase form and an explicit list of kernels work as the CLI's do
    code, again, _ = await call(jp_fetch, "POST", "kernels",
                                body={"target": "beast via unicorn", "kernels": ["python3"],
                                      "cwd": "/tmp"})
    assert code == 201, again
    assert [(k["name"], k["target"], k["via"]) for k in again["installed"]] == [
        ("beast-python3", "beast", ["unicorn"])]
    spec = json.loads((jp_data_dir / "kernels" / "beast-python3" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"]["cwd"] == "/tmp"

    code, body, _ = await call(jp_fetch, "DELETE", "kernels", "beast-python3")
    assert (code, body) == (204, None), body
    assert "beast-python3" not in kernel_dirs(jp_data_dir)
    code, listed, _ = await call(jp_fetch, "GET", "kernels")
    assert (code, listed) == (200, {"installed": [], "running": []})
    code, error, _ = await call(jp_fetch, "DELETE", "kernels", "beast-python3")
    assert code == 404 and error["message"] == "no kernelspec named 'beast-python3'", error
    assert service.manager.tunnels() == [] and service.list() == []
    assert beast_kernel_files(net) == []


@pytest.mark.network
async def test_an_unreachable_target_is_502_and_installs_nothing(
        jp_fetch: Any, jp_data_dir: Path, net: Sandbox, service: TunnelService) -> None:
    # beast is reachable only through unicorn: straight, it cannot be reached
    code, error, _ = await call(jp_fetch, "POST", "kernels", body={"target": "beast"})
    assert code in (502, 504), error
    assert "beast" in error["message"] and error["hop"] == "beast", error
    assert kernel_dirs(jp_data_dir) == ["echo"]
    assert service.manager.tunnels() == [] and service.list() == []


# --- what may be asked ---------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "the request body is not JSON"),
    (b"[]", "must be a JSON object"),
    (b"{}", "'target' is required"),
    (b'{"target": ""}', "'target' is required"),
    (b'{"target": 7}', "'target' is required"),
    (b'{"target": "beast", "ssh_config": "/tmp/evil"}', "unknown field 'ssh_config'"),
    (b'{"target": "beast", "command": "id"}', "unknown field 'command'"),
    (b'{"target": "beast\\nProxyCommand sh"}', "'target' must be one line of text"),
    (b'{"target": "-oProxyCommand=sh"}', "cannot start with '-'"),
    (b'{"target": "' + b"b" * 301 + b'"}', "'target' is too long"),
    (b'{"target": "beast", "via": "unicorn"}', "'via' must be a list of jump host names"),
    (b'{"target": "beast", "via": [1]}', "'via' must be a list of jump host names"),
    (b'{"target": "beast", "via": ["uni\\ncorn"]}', "'via' must be one line of text"),
    (b'{"target": "beast", "via": ["uni corn"]}', "white space"),
    (b'{"target": "beast", "via": ["u"' + b', "u"' * 16 + b"]}", "more than 16 jump hosts"),
    (b'{"target": "beast", "kernels": "python3"}', "'kernels' must be a list"),
    (b'{"target": "beast", "kernels": [3]}', "invalid kernel name not a string in 'kernels'"),
    (b'{"target": "beast", "kernels": ["../x"]}', "invalid kernel name '../x'"),
    (b'{"target": "beast", "kernels": ["py\\n3"]}', "invalid kernel name"),
    (b'{"target": "beast", "kernels": ["' + b"k" * 129 + b'"]}', "invalid kernel name"),
    (b'{"target": "beast", "kernels": [' + b",".join([b'"k"'] * 65) + b"]}",
     "more than 64 kernels"),
    (b'{"target": "beast", "cwd": 5}', "'cwd' must be a folder path"),
    (b'{"target": "beast", "cwd": "/data\\nrm -rf"}', "'cwd' must be one line of text"),
    (b'{"target": "beast", "cwd": "/data\\u0000"}', "'cwd' must be one line of text"),
    (b'{"target": "beast", "cwd": "' + b"d" * 4097 + b'"}', "'cwd' is too long"),
    (b'{"target": "beast", "cwd": "--help"}', "not an option"),
    (b'{"target": "beast via"}', "'via' must be followed by a host name"),
])
async def test_bad_bodies_are_400_with_the_reason(jp_fetch: Any, jp_data_dir: Path,
                                                  service: TunnelService, raw: bytes,
                                                  reason: str) -> None:
    code, error, _ = await call(jp_fetch, "POST", "kernels", raw=raw)
    assert code == 400, error
    assert reason in error["message"] and error["kind"] == "bad-request", error
    assert "\n" not in error["message"]
    assert kernel_dirs(jp_data_dir) == ["echo"]
    assert service.list() == []


async def test_removing_a_foreign_or_unknown_kernelspec_is_404(
        jp_fetch: Any, jp_data_dir: Path) -> None:
    # pytest-jupyter's echo kernelspec is an ordinary one: not ours, left alone
    assert kernel_dirs(jp_data_dir) == ["echo"]
    code, error, _ = await call(jp_fetch, "DELETE", "kernels", "echo")
    assert code == 404, error
    assert error["message"].startswith("kernelspec 'echo' was not installed by jupyter tunnel")
    assert error["kind"] == "not-found", error
    code, error, _ = await call(jp_fetch, "DELETE", "kernels", "nothing-here")
    assert code == 404 and error["message"] == "no kernelspec named 'nothing-here'", error
    for bad in ("..", ".hidden", "a%20b", "x" * 129):
        code, error, _ = await call(jp_fetch, "DELETE", "kernels", bad)
        assert code == 400 and "invalid kernel name" in error["message"], (bad, error)
    assert kernel_dirs(jp_data_dir) == ["echo"]
    assert (jp_data_dir / "kernels" / "echo" / "kernel.json").exists()


async def refused_alike(jp_fetch: Any, body: dict[str, Any]) -> dict[str, Any]:
    """POST kernels and POST tunnels with ``body``: the same refusal, which is returned."""
    code, tunnels, _ = await call(jp_fetch, "POST", "tunnels", body=body)
    code2, kernels, _ = await call(jp_fetch, "POST", "kernels", body=body)
    assert code == code2 == 403, (tunnels, kernels)
    assert kernels == tunnels
    return dict(kernels)


async def test_a_target_outside_the_ssh_config_is_refused_as_for_tunnels(
        jp_fetch: Any, jp_data_dir: Path, service: TunnelService) -> None:
    for body, hop in [({"target": "elsewhere"}, "elsewhere"),
                      ({"target": "beast", "via": ["unicorn", "gate.wild"]}, "gate.wild"),
                      ({"target": "127.0.0.1"}, "127.0.0.1")]:
        error = await refused_alike(jp_fetch, body)
        assert error["message"].startswith(f"{hop} is not allowed: this server reaches only "
                                           "the hosts of its ssh config")
        assert error["kind"] == "not-allowed" and error["hop"] == hop
    assert kernel_dirs(jp_data_dir) == ["echo"]
    assert service.list() == []


@pytest.mark.parametrize("server_extra",
                         [{"TunnelExtensionApp": {"allowed_targets": ["sneaky", "unicorn"]}}])
async def test_operator_list_of_allowed_targets(jp_fetch: Any, jp_data_dir: Path,
                                                service: TunnelService) -> None:
    error = await refused_alike(jp_fetch, {"target": "beast", "via": ["unicorn"]})
    assert error["message"] == ("beast is not allowed: this server reaches only sneaky, "
                                "unicorn (TunnelExtensionApp.allowed_targets)")
    # a ProxyJump of the ssh config cannot bring in a host the list does not have
    code, error, _ = await call(jp_fetch, "POST", "kernels", body={"target": "sneaky"})
    assert code == 403, error
    assert error["message"].startswith("evil.example.com (a jump host of sneaky in the ssh "
                                       "config) is not allowed")
    assert kernel_dirs(jp_data_dir) == ["echo"]
    assert service.list() == []


# --- who may ask ----------------------------------------------------------------------------

ENDPOINTS = [("GET", ("kernels",), None),
             ("POST", ("kernels",), {"target": "beast", "via": ["unicorn"]}),
             ("DELETE", ("kernels", "echo"), None)]


@pytest.mark.parametrize("authorization", ["", "token wrong-token"])
async def test_no_token_is_403(jp_fetch: Any, jp_data_dir: Path, authorization: str) -> None:
    for method, path, body in ENDPOINTS:
        code, data, _ = await call(jp_fetch, method, *path, body=body,
                                   headers={"Authorization": authorization})
        assert code == 403, (method, path, data)
    assert kernel_dirs(jp_data_dir) == ["echo"]


@pytest.mark.parametrize("server_extra", [{"ServerApp": {
    "authorizer_class": "test_rest.DenyAuthorizer"}}])
async def test_every_kernels_endpoint_asks_the_authorizer(jp_fetch: Any,
                                                          jp_data_dir: Path) -> None:
    for method, path, body in ENDPOINTS:
        code, error, _ = await call(jp_fetch, method, *path, body=body)
        assert code == 403, (method, path, error)
    assert kernel_dirs(jp_data_dir) == ["echo"]


@pytest.mark.parametrize("server_extra", [{"ServerApp": {
    "authorizer_class": "test_rest.ViewerAuthorizer"}}])
async def test_installing_needs_the_execute_right(jp_fetch: Any, jp_data_dir: Path,
                                                  service: TunnelService) -> None:
    code, listed, _ = await call(jp_fetch, "GET", "kernels")
    assert (code, listed) == (200, {"installed": [], "running": []})
    code, error, _ = await call(jp_fetch, "POST", "kernels", body={"target": "beast"})
    assert code == 403, error
    assert kernel_dirs(jp_data_dir) == ["echo"] and service.list() == []


def test_the_kernels_handlers_are_authenticated_and_authorized() -> None:
    from jupyter_tunnel.handlers import AUTH_RESOURCE, KernelHandler, KernelsHandler

    for handler, methods in ((KernelsHandler, ("get", "post")), (KernelHandler, ("delete",))):
        assert handler.auth_resource == AUTH_RESOURCE
        for method in methods:
            fn = handler.__dict__[method]
            assert fn.__wrapped__.__wrapped__.__name__ == method, (handler, method)
