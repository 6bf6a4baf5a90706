"""Tunnels that survive: a cut link, a killed jump-host session, a restarted remote Jupyter,
and errors that no retry can fix."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CLI, free_port, need, port_is_free
from test_open import api_status, registry_files

from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec
from jupyter_tunnel.tunnel import Tunnel

pytestmark = pytest.mark.network

FAST = ["--TunnelManager.keepalive_interval=1", "--TunnelManager.keepalive_count_max=2",
        "--TunnelManager.health_interval=1"]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; return the seconds it took, or fail saying ``what``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def answers(url: str) -> bool:
    try:
        return api_status(url) == 200
    except OSError:
        return False


@pytest.fixture
def detached(cli: CLI) -> Iterator[dict[str, object]]:
    """A detached tunnel beast via unicorn with 1 s keepalives and health checks."""
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", *FAST)
    assert info["state"] == "ready", info
    yield info
    cli.run("close", "--all")


def test_cut_link_comes_back_on_the_same_port(cli: CLI, net: Sandbox,
                                              detached: dict[str, object],
                                              runtime_dir: Path) -> None:
    if not net.netns:
        need("cutting a link needs the network-namespace sandbox (root)")
    url = str(detached["url"])
    net.cut_link()
    try:
        # noticed by the keepalives (1 s x 2), however slow this machine is today
        wait_for(lambda: cli.json("status", "beast")["state"] == "reconnecting", 8,
                 "the cut noticed within the keepalive window")
        record = cli.json("status", "beast")
        assert record["state"] == "reconnecting", record
        assert "unicorn (" in record["problem"]
        assert not answers(url)
    finally:
        net.restore_link()
    took = wait_for(lambda: answers(url), 5, "the same URL answers after the link is back")
    print(f"answered {took:.2f} s after the link came back")
    record = cli.json("status", "beast")
    assert record["reconnects"] == 1 and record["state"] == "ready"
    assert record["local_port"] == detached["local_port"] and record["url"] == url
    assert registry_files(runtime_dir) == ["beast.json"]


def test_killed_jump_host_session_reconnects(cli: CLI, net: Sandbox,
                                             detached: dict[str, object]) -> None:
    url = str(detached["url"])
    assert net.kill_sessions("unicorn") >= 1
    # a connection made during the outage is held until the tunnel is back, not refused
    assert api_status(url) == 200
    wait_for(lambda: cli.json("status", "beast")["reconnects"] == 1, 10, "one reconnect")
    record = cli.json("status", "beast")
    assert record["state"] == "ready" and record["url"] == url
    assert net.kill_sessions("unicorn") >= 1  # and again
    wait_for(lambda: cli.json("status", "beast")["reconnects"] == 2, 10, "a second reconnect")
    assert api_status(url) == 200


def test_restarted_jupyter_degraded_then_ready_with_new_token(
        cli: CLI, net: Sandbox, detached: dict[str, object]) -> None:
    assert net.jupyter is not None
    old_url, old_token = str(detached["url"]), net.jupyter.token
    net.stop_jupyter()
    try:
        wait_for(lambda: cli.json("status", "beast")["state"] == "degraded", 10,
                 "state degraded")
        record = cli.json("status", "beast")
        assert "no Jupyter server runs on beast any more: start it again there" \
            in record["problem"]
        assert "degraded" in cli.run("list").stdout
    finally:
        jupyter = net.start_jupyter()  # the other tests need it
    assert jupyter.token != old_token
    wait_for(lambda: cli.json("status", "beast")["state"] == "ready", 10, "ready again")
    record = cli.json("status", "beast")
    assert record["url"] != old_url and jupyter.token in record["url"]
    assert old_token not in record["url"]
    assert record["local_port"] == detached["local_port"]
    assert api_status(record["url"]) == 200


@pytest.fixture
def manager(net: Sandbox, tmp_path: Path) -> Iterator[TunnelManager]:
    """A manager on a spoilable copy of the network's config; its tunnels close at the end."""
    key, known = tmp_path / "key", tmp_path / "known_hosts"
    shutil.copy(net.key, key)
    key.chmod(0o600)
    shutil.copy(net.known_hosts, known)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(net.ssh_config.read_text().replace(str(net.key), str(key))
                   .replace(str(net.known_hosts), str(known)))
    manager = TunnelManager(ssh_config=str(cfg), keepalive_interval=1, keepalive_count_max=2,
                            reconnect_max_delay=1)
    yield manager
    for tunnel in manager.tunnels():
        tunnel.close()


def _open_in_process(manager: TunnelManager) -> tuple[Tunnel, list[str]]:
    states: list[str] = []
    def on_event(t: Tunnel, event: str) -> None:
        if event == "state":
            states.append(f"{t.state.value}:{t.attempt}")

    tunnel = manager.open(build_spec("beast via unicorn"), on_event)
    return tunnel, states


def assert_failed_record_then_gone(manager: TunnelManager, runtime_dir: Path,
                                   kind: str) -> None:
    """The failed tunnel's record says why (the panel and `list` show it) until closed."""
    record = manager.status("beast")
    assert record["state"] == "failed" and record["error"]["kind"] == kind
    assert registry_files(runtime_dir) == ["beast.json"]
    manager.close("beast")
    assert registry_files(runtime_dir) == []


def test_wrong_key_during_reconnect_fails_after_one_attempt(
        net: Sandbox, tmp_path: Path, runtime_dir: Path, manager: TunnelManager) -> None:
    tunnel, states = _open_in_process(manager)
    port = tunnel.local_port
    (tmp_path / "key").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")],
                   check=True)
    net.kill_sessions("unicorn")
    assert tunnel.wait(15), "the tunnel did not stop"
    assert tunnel.state.value == "failed"
    assert tunnel.error is not None and tunnel.error.kind == "auth"
    assert "unicorn (" in tunnel.error.message and "refused to log in" in tunnel.error.message
    assert [s for s in states if s.startswith("reconnecting")] == ["reconnecting:1"]
    assert port is not None and port_is_free(port)
    assert_failed_record_then_gone(manager, runtime_dir, "auth")


def test_changed_host_key_during_reconnect_fails_after_one_attempt(
        net: Sandbox, tmp_path: Path, runtime_dir: Path, manager: TunnelManager) -> None:
    tunnel, states = _open_in_process(manager)
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    address = net.hosts["beast"].address
    known.write_text("".join(
        f"{line.split()[0]} {fake[0]} {fake[1]}\n" if line.startswith(address) else line
        for line in known.read_text().splitlines(keepends=True)))
    net.kill_sessions("unicorn")
    assert tunnel.wait(15), "the tunnel did not stop"
    assert tunnel.error is not None and tunnel.error.kind == "host-key"
    assert "host key for beast (" in tunnel.error.message and "CHANGED" in tunnel.error.message
    assert [s for s in states if s.startswith("reconnecting")] == ["reconnecting:1"]
    assert_failed_record_then_gone(manager, runtime_dir, "host-key")


def test_reconnect_button_keeps_url(net: Sandbox, runtime_dir: Path) -> None:
    manager = TunnelManager(ssh_config=str(net.ssh_config))
    with manager.open(build_spec("beast via unicorn")) as tunnel:
        url = tunnel.url
        assert url is not None
        tunnel.reconnect()
        wait_for(lambda: tunnel.reconnects == 1 and tunnel.state.value == "ready", 10,
                 "reconnected")
        assert tunnel.url == url and api_status(url) == 200
    port = urllib.parse.urlsplit(url).port
    assert port is not None and port_is_free(port)
    with pytest.raises(Exception, match="is closed: open it again"):
        tunnel.reconnect()


SINK = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(4)
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    while conn.recv(1 << 16):
        pass
"""


def test_cut_link_during_an_upload_is_noticed(cli: CLI, net: Sandbox, runtime_dir: Path) -> None:
    """A relay thread blocked writing into the dead link must not blind the keepalives."""
    if not net.netns:
        need("cutting a link needs the network-namespace sandbox (root)")
    sink_port = 26000 + os.getpid() % 3000
    sink = net.popen_in("beast", [sys.executable, "-c", SINK, str(sink_port)],
                        stdout=subprocess.PIPE, text=True)
    stop = threading.Event()
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
        local = free_port()
        info = cli.json("open", "beast", "--via", "unicorn", "--detach", *FAST,
                        "--forward", f"{local}:127.0.0.1:{sink_port}")

        def upload() -> None:
            with socket.create_connection(("127.0.0.1", local)) as s:
                s.settimeout(1)
                block = b"x" * (1 << 16)
                while not stop.is_set():
                    try:
                        s.sendall(block)
                    except TimeoutError:
                        continue
                    except OSError:  # the tunnel drops connections that rode the dead link
                        return

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        time.sleep(1)
        net.cut_link()
        try:
            wait_for(lambda: cli.json("status", "beast")["state"] == "reconnecting", 8,
                     "the cut noticed within the keepalive window while uploading")
        finally:
            net.restore_link()
        wait_for(lambda: answers(str(info["url"])), 10, "the tunnel back after the cut")
    finally:
        stop.set()
        sink.kill()
        sink.wait()
        cli.run("close", "--all")
    assert registry_files(runtime_dir) == []
