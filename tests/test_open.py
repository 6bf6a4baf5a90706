"""`jupyter tunnel open` through the real network: laptop -> unicorn -> beast."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import CLI, foreground, port_is_free

from jupyter_tunnel import procinfo
from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network


def api_status(url: str) -> int:
    """GET api/status through the tunnel with the token from the URL, as a browser tab would."""
    parts = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    base = parts.path.rsplit("lab", 1)[0]
    req = urllib.request.Request(f"{parts.scheme}://{parts.netloc}{base}api/status",
                                 headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as response:
        return int(response.status)


def registry_files(runtime_dir: Path) -> list[str]:
    folder = runtime_dir / "jupyter_tunnel"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def test_foreground_open_prints_working_url_and_ctrl_c_cleans_up(
        cli: CLI, net: Sandbox, runtime_dir: Path) -> None:
    with foreground(cli.argv("open", "beast", "--via", "unicorn")) as (proc, url):
        assert net.jupyter is not None and f"token={net.jupyter.token}" in url
        assert api_status(url) == 200
        port = urllib.parse.urlsplit(url).port
        assert port is not None
        # the listener is on 127.0.0.1 only
        assert port_is_free(port, "127.0.0.2")
        listed = cli.json("list")
        assert [(t["name"], t["state"], t["hops"], t["local_port"]) for t in listed] == [
            ("beast", "ready", ["unicorn", "beast"], port)]
        assert (runtime_dir / "jupyter_tunnel").stat().st_mode & 0o777 == 0o700
        assert (runtime_dir / "jupyter_tunnel" / "beast.json").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        err = proc.stderr.read() if proc.stderr else ""
    assert "[1/2] connecting to unicorn" in err and "[2/2] connecting to beast" in err
    assert "closed" in err
    assert net.jupyter.token not in err
    assert port_is_free(port)
    assert registry_files(runtime_dir) == []


#: the CLI, with Ctrl-C arriving at the one moment a user or script might hit: the URL is
#: printed, the tunnel ready, the wait for Ctrl-C not yet begun (on its last words)
CTRL_C_AFTER_URL = """
import sys
from jupyter_tunnel import cli_base, cli_open
from jupyter_tunnel.cli import main
for cls in (cli_base.BaseTunnelApp, cli_open.OpenApp):
    def say(self, text, _orig=cls.say):
        _orig(self, text)
        if text.startswith("Press Ctrl-C"):
            raise KeyboardInterrupt
    cls.say = say
sys.argv[0] = "jupyter-tunnel"
main()
"""


def test_ctrl_c_as_soon_as_the_url_shows_is_a_normal_close(
        cli: CLI, net: Sandbox, runtime_dir: Path) -> None:
    """Ctrl-C after the URL but before the wait for it (a user quick on the keys, a script
    that reads the URL and stops it) closes cleanly with exit 0, as later does: it was a
    traceback (a loaded CI run of the demo, which had the same window, got 130)."""
    argv = [sys.executable, "-c", CTRL_C_AFTER_URL, *cli.argv("open", "beast", "--via",
                                                              "unicorn")[3:]]
    with foreground(argv) as (proc, url):
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err and "closed" in err, err
    port = urllib.parse.urlsplit(url).port
    assert port is not None and port_is_free(port)
    assert registry_files(runtime_dir) == []


def test_detach_list_status_close(cli: CLI, net: Sandbox, runtime_dir: Path) -> None:
    info = cli.json("open", "beast", "via", "unicorn", "--detach", "--name", "bg")
    assert info["state"] == "ready" and info["name"] == "bg"
    assert info["hops"] == ["unicorn", "beast"]
    assert net.jupyter is not None and info["remote_port"] == net.jupyter.port
    assert api_status(info["url"]) == 200
    pid, port = info["pid"], info["local_port"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert net.jupyter.token not in cmdline
    status = cli.json("status", "bg")
    assert (status["state"], status["pid"], status["local_port"]) == ("ready", pid, port)
    text = cli.run("status", "bg").stdout
    assert "state:       ready" in text and "unicorn -> beast" in text
    # one name never maps to two tunnels
    again = cli.run("open", "beast", "--via", "unicorn", "--name", "bg")
    assert again.returncode != 0 and "already open" in again.stderr
    closed = cli.run("close", "bg")
    assert closed.returncode == 0, closed.stderr
    assert not procinfo.is_alive(pid, None)  # gone (an unreaped zombie holds nothing)
    assert port_is_free(port)
    assert registry_files(runtime_dir) == []
    assert cli.run("list").stdout.strip() == "No tunnels."
    missing = cli.run("status", "bg")
    assert missing.returncode == 1 and "no tunnel named 'bg'" in missing.stderr


def test_proxyjump_from_ssh_config_needs_no_via(cli: CLI) -> None:
    info = cli.json("open", "beast-via-unicorn", "--detach")
    try:
        assert info["hops"] == ["unicorn", "beast-via-unicorn"]
        assert api_status(info["url"]) == 200
    finally:
        cli.run("close", info["name"])


def test_chosen_local_and_remote_port(cli: CLI, net: Sandbox) -> None:
    assert net.jupyter is not None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        wanted = s.getsockname()[1]
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", "--local-port", str(wanted),
                    "--remote-port", str(net.jupyter.port))
    try:
        assert info["local_port"] == wanted
        assert api_status(info["url"]) == 200
    finally:
        cli.run("close", "--all")
    assert port_is_free(wanted)
    wrong = cli.run("open", "beast", "--via", "unicorn", "--remote-port", "1")
    assert wrong.returncode == 1
    assert f"no running Jupyter server on beast listens on port 1 (running: {net.jupyter.port})"\
        in wrong.stderr


def test_python_api_in_process(net: Sandbox, runtime_dir: Path) -> None:
    from jupyter_tunnel.manager import TunnelManager
    from jupyter_tunnel.spec import build_spec

    manager = TunnelManager(ssh_config=str(net.ssh_config), owner="python")
    events: list[str] = []
    tunnel = manager.open(build_spec("beast via unicorn"), lambda t, e: events.append(t.state))
    try:
        assert tunnel.url and api_status(tunnel.url) == 200
        assert tunnel.alive()
        assert events[-1] == "ready" and "detecting" in events
        record = json.loads((runtime_dir / "jupyter_tunnel" / "beast.json").read_text())
        assert record["state"] == "ready" and record["owner"] == "python"
    finally:
        tunnel.close()
    assert tunnel.local_port is not None and port_is_free(tunnel.local_port)
    assert registry_files(runtime_dir) == []
    time.sleep(0.2)
    assert manager.list() == []


def test_jump_host_gone_for_good_fails_after_give_up(cli: CLI, net: Sandbox,
                                                     runtime_dir: Path) -> None:
    argv = cli.argv("open", "beast", "--via", "unicorn",
                    "--TunnelManager.reconnect_give_up=3", "--TunnelManager.reconnect_max_delay=1")
    with foreground(argv) as (proc, url):
        # requests in flight, as from a browser: the jump helper then dies while sending,
        # and ssh's own words no longer name the hop (the loss must still name unicorn)
        done = threading.Event()

        def browse() -> None:
            while not done.is_set():
                with contextlib.suppress(OSError):
                    api_status(url)

        browsers = [threading.Thread(target=browse) for _ in range(4)]
        for browser in browsers:
            browser.start()
        try:
            assert api_status(url) == 200
            net.stop_sshd("unicorn")  # ends the sessions too: the jump host is gone
            assert proc.wait(timeout=30) == 1
        finally:
            done.set()
            for browser in browsers:
                browser.join()
            net.start_sshd("unicorn")
        err = proc.stderr.read() if proc.stderr else ""
    assert "Connection lost: the connection to unicorn (" in err
    assert "Tunnel beast failed: gave up reconnecting after" in err
    assert "unicorn (" in err.rsplit("gave up", 1)[1]
    port = urllib.parse.urlsplit(url).port
    assert port is not None and port_is_free(port)
    assert registry_files(runtime_dir) == []


def test_silent_outage_is_noticed_by_keepalives(net: Sandbox, tmp_path: Path,
                                                runtime_dir: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.write_text(net.ssh_config.read_text().replace(
        "Host unicorn\n", "Host unicorn\n  ServerAliveInterval 1\n  ServerAliveCountMax 2\n"))
    cli = CLI(cfg)
    with foreground(cli.argv("open", "beast", "--via", "unicorn")) as (proc, url):
        time.sleep(3)  # answered keepalives keep it up
        assert cli.json("status", "beast")["state"] == "ready" and api_status(url) == 200
        net.pause_sessions("unicorn")  # no FIN, no RST: only keepalives can tell
        try:
            t0 = time.monotonic()
            while cli.json("status", "beast")["reconnects"] != 1:
                assert time.monotonic() - t0 < 10, "the outage was not noticed"
                time.sleep(0.3)
        finally:
            net.resume_sessions("unicorn")
        record = cli.json("status", "beast")
        assert record["state"] == "ready" and record["url"] == url
        assert api_status(url) == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        err = proc.stderr.read() if proc.stderr else ""
    assert "Connection lost: unicorn (" in err
    assert "stopped answering: 2 keepalive(s) sent 1 s apart got no reply" in err
    assert "Ready again on 127.0.0.1:" in err
    port = urllib.parse.urlsplit(url).port
    assert port is not None and port_is_free(port)
    assert registry_files(runtime_dir) == []


def test_traits_from_jupyter_tunnel_config_py(net: Sandbox, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "jupyter-config"
    config_dir.mkdir()
    (config_dir / "jupyter_tunnel_config.py").write_text(
        f"c.TunnelManager.ssh_config = {str(net.ssh_config)!r}\n"
        f"c.TunnelManager.registry_dir = {str(tmp_path / 'reg')!r}\n")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config_dir))
    plain = CLI(None)  # no --ssh-config: it must come from the config file
    info = plain.json("open", "beast", "--via", "unicorn", "--detach")
    try:
        assert api_status(info["url"]) == 200
        assert (tmp_path / "reg" / "beast.json").exists()
    finally:
        assert plain.run("close", "beast").returncode == 0
