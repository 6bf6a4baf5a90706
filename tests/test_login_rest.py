"""Logins that ask, through the REST API (what the panel uses): a tunnel the server opens to
beast via a jump host that wants a TOTP code shows the question as its ``prompt``; ``POST
…/tunnels/NAME/answer`` answers it and the tunnel comes up; a wrong code fails it naming the
hop; an unanswered one times out; a stale or malformed answer is refused and changes
nothing.  The code never lands in the registry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from test_rest import call, registry_files, status_through, until

from jupyter_tunnel.rest_service import TunnelService
from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["pytest_jupyter.jupyter_server"]
pytestmark = pytest.mark.network



@pytest.fixture
def backend() -> str:
    return "openssh"


@pytest.fixture
def answer_timeout() -> float:
    return 120.0


@pytest.fixture
def jp_base_url() -> str:
    return "/user/alice/"


@pytest.fixture
def jp_server_config(totp_net: Sandbox, backend: str, answer_timeout: float) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_tunnel": True},
                      "allow_unauthenticated_access": False},
        "TunnelManager": {"ssh_config": str(totp_net.ssh_config), "backend": backend,
                          "answer_timeout": answer_timeout},
    }


@pytest.fixture
def service(jp_serverapp: Any) -> TunnelService:
    found: TunnelService = jp_serverapp.web_app.settings["jupyter_tunnel_service"]
    return found


async def _until_asked(jp_fetch: Any, name: str, timeout: float = 40) -> dict[str, Any]:
    """Poll the tunnel (as the panel does) until it shows a question; a tunnel of another
    process appears once that process has recorded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, data, _ = await call(jp_fetch, "GET", "tunnels", name)
        if code == 404:
            await asyncio.sleep(0.1)
            continue
        assert code == 200, data
        if data["prompt"] is not None:
            return dict(data)
        assert data["state"] not in ("ready", "failed"), data
        await asyncio.sleep(0.1)
    pytest.fail(f"tunnel {name} showed no question within {timeout} s")


def _registry_text(service: TunnelService) -> str:
    folder = service.manager.registry.path
    return "".join(p.read_text() for p in folder.glob("*.json")) if folder.exists() else ""


async def _answer(jp_fetch: Any, name: str, body: Any) -> tuple[int, Any]:
    code, data, _ = await call(jp_fetch, "POST", "tunnels", name, "answer", body=body)
    return code, data


@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
async def test_the_panel_gets_the_question_and_its_answer_opens_the_tunnel(
        jp_fetch: Any, service: TunnelService, totp_net: Sandbox, backend: str) -> None:
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, opened
    waiting = await _until_asked(jp_fetch, "beast")
    prompt = waiting["prompt"]
    assert prompt["hop"] == "unicorn" and prompt["echo"] is False, prompt
    assert "One-time password" in prompt["text"], prompt
    assert waiting["problem"].startswith("waiting for an answer: unicorn"), waiting["problem"]
    # the same question in the list, as the panel reads it
    listed = (await call(jp_fetch, "GET", "tunnels"))[1]
    assert [t["prompt"]["id"] for t in listed] == [prompt["id"]]

    # malformed or stale answers are refused and change nothing
    for body, status, words in [
        ({"id": prompt["id"]}, 400, "request body must be"),
        ({"id": prompt["id"], "answer": 123456}, 400, "must be a string"),
        ({"id": prompt["id"], "answer": "12\n34"}, 400, "one line"),
        ({"id": prompt["id"], "answer": "1", "hop": "x"}, 400, "request body must be"),
        ({"id": "0123456789abcdef", "answer": "123456"}, 409, "no longer waits"),
    ]:
        code, error = await _answer(jp_fetch, "beast", body)
        assert (code, words in error["message"]) == (status, True), (body, error)
    assert (await _answer(jp_fetch, "nosuch", {"id": prompt["id"], "answer": "1"}))[0] == 404
    still = (await call(jp_fetch, "GET", "tunnels", "beast"))[1]
    assert still["prompt"] == prompt and still["state"] == "connecting", still

    secret = totp_net.next_code()
    code, answered = await _answer(jp_fetch, "beast", {"id": prompt["id"], "answer": secret})
    assert code == 202 and answered["name"] == "beast", answered
    ready = await until(jp_fetch, "beast", {"ready", "failed"}, timeout=60)
    assert ready["state"] == "ready", ready["error"]
    assert ready["prompt"] is None and ready["problem"] is None, ready
    assert await status_through(ready["url"]) == 200
    code, error = await _answer(jp_fetch, "beast", {"id": prompt["id"], "answer": secret})
    assert code == 409 and "waits for no answer" in error["message"], error
    assert secret not in _registry_text(service)

    code, closed, _ = await call(jp_fetch, "DELETE", "tunnels", "beast")
    assert code == 200 and closed["state"] == "closed", closed
    assert registry_files(service) == []


@pytest.mark.parametrize("backend", ["sshtunnel"])
async def test_a_wrong_code_fails_the_tunnel_naming_the_hop(
        jp_fetch: Any, service: TunnelService, totp_net: Sandbox) -> None:
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, opened
    prompt = (await _until_asked(jp_fetch, "beast"))["prompt"]
    right = totp_net.next_code()
    wrong = "000000" if right != "000000" else "111111"
    assert (await _answer(jp_fetch, "beast", {"id": prompt["id"], "answer": wrong}))[0] == 202
    failed = await until(jp_fetch, "beast", {"ready", "failed"}, timeout=60)
    assert failed["state"] == "failed" and failed["prompt"] is None, failed
    assert failed["error"]["kind"] == "auth" and failed["error"]["hop"] == "unicorn", failed
    assert "refused" in failed["error"]["error"], failed["error"]
    assert wrong not in _registry_text(service)
    assert (await call(jp_fetch, "DELETE", "tunnels", "beast"))[0] == 200
    assert registry_files(service) == []


@pytest.mark.parametrize("answer_timeout", [2.0])
async def test_an_unanswered_question_times_out(jp_fetch: Any, service: TunnelService,
                                                tmp_path: Path) -> None:
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, opened
    await _until_asked(jp_fetch, "beast")
    failed = await until(jp_fetch, "beast", {"ready", "failed"}, timeout=60)
    assert failed["state"] == "failed" and failed["prompt"] is None, failed
    assert failed["error"]["kind"] == "auth" and "within 2 s" in failed["error"]["error"], failed
    assert (await call(jp_fetch, "DELETE", "tunnels", "beast"))[0] == 200
    assert registry_files(service) == []


@pytest.mark.parametrize("backend", ["sshtunnel"])
async def test_the_panel_answers_a_tunnel_that_a_detached_cli_opens(
        jp_fetch: Any, service: TunnelService, totp_net: Sandbox) -> None:
    registry = str(service.manager.registry.path)
    opener = subprocess.Popen(
        CLI(totp_net.ssh_config).argv("open", "beast", "--via", "unicorn", "--backend",
                                      "sshtunnel", "--detach", "--json", "--name", "cli-beast",
                                      f"--TunnelManager.registry_dir={registry}"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waiting = await _until_asked(jp_fetch, "cli-beast")
        assert waiting["owner"] == "cli" and waiting["pid"] != os.getpid(), waiting
        prompt = waiting["prompt"]
        code, error = await _answer(jp_fetch, "cli-beast",
                                    {"id": "0123456789abcdef", "answer": "123456"})
        assert code == 409 and "no longer waits" in error["message"], error
        secret = totp_net.next_code()
        code, _ = await _answer(jp_fetch, "cli-beast", {"id": prompt["id"], "answer": secret})
        assert code == 202
        out, err = await asyncio.to_thread(opener.communicate, timeout=90)
        info = json.loads(out)
        assert info["state"] == "ready", (info, err)
        assert await status_through(info["url"]) == 200
        assert secret not in _registry_text(service)
    finally:
        with contextlib.suppress(ProcessLookupError):
            opener.kill()
        opener.wait()
        subprocess.run(CLI(totp_net.ssh_config).argv(
            "close", "--all", f"--TunnelManager.registry_dir={registry}"),
            capture_output=True, timeout=60)
    assert registry_files(service) == []


@pytest.mark.parametrize("backend", ["openssh"])
async def test_jupyter_tunnel_answer_answers_a_tunnel_the_panel_opens(
        jp_fetch: Any, service: TunnelService, totp_net: Sandbox) -> None:
    registry = f"--TunnelManager.registry_dir={service.manager.registry.path}"
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, opened
    await _until_asked(jp_fetch, "beast")
    secret = totp_net.next_code()
    answered = await asyncio.to_thread(
        subprocess.run, CLI(totp_net.ssh_config).argv("answer", "beast", registry),
        input=secret + "\n", capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    assert "unicorn (" in answered.stderr and "Answered unicorn (" in answered.stderr
    ready = await until(jp_fetch, "beast", {"ready", "failed"}, timeout=60)
    assert ready["state"] == "ready", ready["error"]
    assert await status_through(ready["url"]) == 200
    assert (await call(jp_fetch, "DELETE", "tunnels", "beast"))[0] == 200
    assert registry_files(service) == []


@pytest.mark.parametrize("backend", ["sshtunnel"])
async def test_a_reconnect_asks_again_through_the_panel(
        jp_fetch: Any, service: TunnelService, totp_net: Sandbox) -> None:
    code, opened, _ = await call(jp_fetch, "POST", "tunnels",
                                 body={"target": "beast", "via": ["unicorn"]})
    assert code == 201, opened
    first = (await _until_asked(jp_fetch, "beast"))["prompt"]
    assert (await _answer(jp_fetch, "beast", {"id": first["id"],
                                              "answer": totp_net.next_code()}))[0] == 202
    assert (await until(jp_fetch, "beast", {"ready", "failed"}, timeout=60))["state"] == "ready"
    service.manager.get("beast").reconnect()  # as after a network change
    await until(jp_fetch, "beast", {"reconnecting"})
    waiting = await _until_asked(jp_fetch, "beast")
    assert waiting["state"] == "reconnecting" and waiting["prompt"]["id"] != first["id"]
    assert waiting["problem"].startswith("waiting for an answer: unicorn"), waiting
    assert (await _answer(jp_fetch, "beast", {"id": waiting["prompt"]["id"],
                                              "answer": totp_net.next_code()}))[0] == 202
    back = await until(jp_fetch, "beast", {"ready", "failed"}, timeout=60)
    assert back["state"] == "ready" and back["reconnects"] == 1, back
    assert await status_through(back["url"]) == 200
    assert (await call(jp_fetch, "DELETE", "tunnels", "beast"))[0] == 200
