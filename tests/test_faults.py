"""Bad input and faults: each gives a clear error, a non-zero exit, and leaves nothing behind."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, free_port, port_is_free

from jupyter_tunnel.hostkeys import fingerprint
from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network


def processes_of(runtime_dir: Path) -> list[int]:
    """Processes started for this test: they inherit its private JUPYTER_RUNTIME_DIR (the
    sandbox's own processes never do: they run in an environment of their own), or name a
    path in it on their command line (as a process that wrote its title over its
    environment would, like an ssh master named after its control socket)."""
    mark = f"JUPYTER_RUNTIME_DIR={runtime_dir}".encode()
    path = str(runtime_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in environ or any(a == path or path + b"/" in a for a in args):
            found.append(int(proc.name))
    return found


def describe(pids: list[int]) -> str:
    """pid and command line of each process, for an assertion's message."""
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "(gone)"
        lines.append(f"pid {pid}: {cmd.strip()}")
    return "; ".join(lines)


def assert_left_nothing(runtime_dir: Path, port: int | None = None) -> None:
    """No registry entry, no process of ours, and the port (if any) free."""
    folder = runtime_dir / "jupyter_tunnel"
    assert not folder.exists() or not list(folder.glob("*.json"))
    left = processes_of(runtime_dir)
    assert left == [], f"left running: {describe(left)}"
    if port is not None:
        assert port_is_free(port)


def failed(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/jt-pwned", "a;b", "a b",
                                  "$(touch /tmp/jt-pwned)"])
@pytest.mark.parametrize("where", ["target", "via"])
def test_hostile_host_names_are_refused(cli: CLI, runtime_dir: Path, host: str,
                                        where: str) -> None:
    args = ["open", host, "--via", "unicorn"] if where == "target" else \
        ["open", "beast", f"--via={host}"]
    result = cli.run(*args)
    failed(result, "cannot start with '-'" if host.startswith("-") else "invalid host")
    assert not os.path.exists("/tmp/jt-pwned")
    assert_left_nothing(runtime_dir)


@pytest.mark.parametrize("option", ["--local-port", "--remote-port"])
@pytest.mark.parametrize("value", ["0", "65536", "abc"])
def test_bad_ports_are_refused(cli: CLI, runtime_dir: Path, option: str, value: str) -> None:
    result = cli.run("open", "beast", "--via", "unicorn", f"{option}={value}")
    shown = repr(value) if value == "abc" else value
    failed(result, f"port must be a number from 1 to 65535, not {shown}")
    assert result.returncode == 2
    assert_left_nothing(runtime_dir)


def test_json_error_names_the_hop(cli: CLI, net: Sandbox, runtime_dir: Path) -> None:
    net.stop_sshd("unicorn")
    try:
        result = cli.run("open", "beast", "--via", "unicorn", "--json")
    finally:
        net.start_sshd("unicorn")
    assert result.returncode == 1
    import json

    error = json.loads(result.stdout)
    assert error["hop"] == "unicorn" and error["kind"] == "unreachable"
    assert "refused the connection" in error["error"]


def _config_with(net: Sandbox, tmp_path: Path, *, known_hosts: str | None = None,
                 identity: Path | None = None) -> Path:
    text = net.ssh_config.read_text()
    if known_hosts is not None:
        kh = tmp_path / "known_hosts"
        kh.write_text(known_hosts)
        text = text.replace(str(net.known_hosts), str(kh))
    if identity is not None:
        text = text.replace(str(net.key), str(identity))
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return path


def _host_line(net: Sandbox, name: str) -> str:
    return next(line for line in net.known_hosts.read_text().splitlines()
                if line.startswith((net.hosts[name].address, f"[{net.hosts[name].address}]")))


def _server_fp(net: Sandbox, name: str) -> str:
    blob = base64.b64decode(_host_line(net, name).split()[2])
    return fingerprint(blob)


@pytest.fixture
def other_key(tmp_path: Path) -> Iterator[Path]:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-f", str(key)], check=True)
    yield key


@pytest.mark.parametrize("bad_hop", ["unicorn", "beast"])
def test_unknown_host_key_is_refused(net: Sandbox, tmp_path: Path, runtime_dir: Path,
                                     bad_hop: str) -> None:
    good = "beast" if bad_hop == "unicorn" else "unicorn"
    cfg = _config_with(net, tmp_path, known_hosts=_host_line(net, good) + "\n")
    result = CLI(cfg).run("open", "beast", "--via", "unicorn")
    failed(result, f"host key for {bad_hop} (", "is not known", _server_fp(net, bad_hop))
    assert_left_nothing(runtime_dir)


@pytest.mark.parametrize("bad_hop", ["unicorn", "beast"])
def test_changed_host_key_is_refused(net: Sandbox, tmp_path: Path, runtime_dir: Path,
                                     other_key: Path, bad_hop: str) -> None:
    lines = []
    for name in ("unicorn", "beast"):
        line = _host_line(net, name)
        if name == bad_hop:
            host = line.split()[0]
            line = f"{host} {Path(str(other_key) + '.pub').read_text().split()[0]} " + \
                Path(str(other_key) + ".pub").read_text().split()[1]
        lines.append(line)
    cfg = _config_with(net, tmp_path, known_hosts="\n".join(lines) + "\n")
    result = CLI(cfg).run("open", "beast", "--via", "unicorn")
    failed(result, f"host key for {bad_hop} (", "has CHANGED", _server_fp(net, bad_hop),
           "ssh-keygen -R")
    assert_left_nothing(runtime_dir)


def test_accept_new_records_the_key(net: Sandbox, tmp_path: Path, runtime_dir: Path) -> None:
    cfg = _config_with(net, tmp_path, known_hosts=_host_line(net, "unicorn") + "\n")
    cfg.write_text(cfg.read_text().replace("StrictHostKeyChecking yes",
                                           "StrictHostKeyChecking accept-new"))
    result = CLI(cfg).run("open", "beast", "--via", "unicorn", "--detach")
    assert result.returncode == 0, result.stderr
    assert "Permanently added the ssh-ed25519 host key of beast (" in result.stderr
    assert _server_fp(net, "beast") in result.stderr
    assert CLI(cfg).run("close", "--all").returncode == 0
    assert _host_line(net, "beast").split()[2] in (tmp_path / "known_hosts").read_text()


def test_wrong_key_is_refused(net: Sandbox, tmp_path: Path, runtime_dir: Path,
                              other_key: Path) -> None:
    cfg = _config_with(net, tmp_path, identity=other_key)
    result = CLI(cfg).run("open", "beast", "--via", "unicorn")
    failed(result, "unicorn (", "refused to log in", str(other_key))
    assert_left_nothing(runtime_dir)


def test_missing_ssh_config_file(runtime_dir: Path, tmp_path: Path) -> None:
    result = CLI(tmp_path / "nope").run("open", "beast")
    failed(result, "ssh config file", "does not exist")


@pytest.mark.parametrize(("down", "words"), [
    ("unicorn", ("unicorn (", "refused the connection")),  # the jump host
    ("beast", ("unicorn could not connect to beast (",)),  # the target
])
def test_hop_down(cli: CLI, net: Sandbox, runtime_dir: Path, down: str,
                  words: tuple[str, ...]) -> None:
    net.stop_sshd(down)
    try:
        result = cli.run("open", "beast", "--via", "unicorn")
    finally:
        net.start_sshd(down)
    failed(result, *words)
    assert_left_nothing(runtime_dir)


def test_leak_check_sees_what_is_left_running(cli: CLI, net: Sandbox,
                                             runtime_dir: Path) -> None:
    """assert_left_nothing can fail: an ssh that the CLI would leave behind, and a tunnel
    left open (its process and, with the openssh backend, its ssh processes)."""
    ssh = subprocess.Popen(net.ssh_argv("unicorn", "-N"), stdin=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with pytest.raises(AssertionError, match=rf"pid {ssh.pid}: ssh -F "):
            assert_left_nothing(runtime_dir)
    finally:
        ssh.kill()
        ssh.wait()
    info = cli.json("open", "beast", "--via", "unicorn", "--detach")
    try:
        expected = {info["pid"], *(c["pid"] for c in info.get("children", []))}
        assert expected <= set(processes_of(runtime_dir))
    finally:
        assert cli.run("close", "--all").returncode == 0
    assert_left_nothing(runtime_dir, info["local_port"])


def test_unreachable_address_times_out_with_hop_named(net: Sandbox, tmp_path: Path,
                                                      runtime_dir: Path) -> None:
    if not net.netns:
        pytest.skip("needs the namespace network's unreachable test range")
    cfg = tmp_path / "cfg"
    cfg.write_text(net.ssh_config.read_text() + "\nHost ghost\n  HostName 10.213.255.254\n")
    result = CLI(cfg).run("open", "beast", "--via", "ghost")
    failed(result, "ghost (10.213.255.254:22)")
    assert_left_nothing(runtime_dir)


def test_unknown_host_name(cli: CLI, runtime_dir: Path) -> None:
    result = cli.run("open", "beast", "--via", "nosuchhost.invalid")
    failed(result, "cannot resolve nosuchhost.invalid")
    assert_left_nothing(runtime_dir)


@pytest.mark.parametrize("detach", [False, True])
def test_no_jupyter_on_target(cli: CLI, net: Sandbox, runtime_dir: Path, detach: bool) -> None:
    port = free_port()
    net.stop_jupyter()
    try:
        result = cli.run("open", "beast", "--via", "unicorn", "--local-port", str(port),
                         *(["--detach"] if detach else []))
    finally:
        net.start_jupyter()
    failed(result, "no running Jupyter server found on beast", "--launch")
    assert_left_nothing(runtime_dir, port)


def test_host_key_error_as_json(net: Sandbox, tmp_path: Path, runtime_dir: Path) -> None:
    import json

    cfg = _config_with(net, tmp_path, known_hosts=_host_line(net, "unicorn") + "\n")
    result = CLI(cfg).run("open", "beast", "--via", "unicorn", "--json", "--detach")
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert (error["kind"], error["hop"]) == ("host-key", "beast")
    assert _server_fp(net, "beast") in error["error"]
    assert_left_nothing(runtime_dir)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a black hole, not SSH)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def test_silent_hop_times_out_naming_it(net: Sandbox, tmp_path: Path, runtime_dir: Path,
                                        silent_server: int) -> None:
    cfg = tmp_path / "cfg"
    cfg.write_text(net.ssh_config.read_text() +
                   f"\nHost silent\n  HostName 127.0.0.1\n  Port {silent_server}\n"
                   "  ConnectTimeout 2\n")
    result = CLI(cfg).run("open", "beast", "--via", "silent", timeout=30)
    failed(result, "silent (127.0.0.1:", "did not complete the SSH handshake within 2 s")
    assert_left_nothing(runtime_dir)


def test_sigterm_during_open_stops_at_once(net: Sandbox, tmp_path: Path, runtime_dir: Path,
                                           silent_server: int) -> None:
    import time

    cfg = tmp_path / "cfg"
    cfg.write_text(net.ssh_config.read_text() +
                   f"\nHost silent\n  HostName 127.0.0.1\n  Port {silent_server}\n")
    proc = subprocess.Popen(CLI(cfg).argv("open", "beast", "--via", "silent"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    assert "connecting to silent" in proc.stderr.readline() + proc.stderr.readline()
    t0 = time.monotonic()
    proc.terminate()
    assert proc.wait(timeout=10) == 130
    assert time.monotonic() - t0 < 3
    assert "nothing left open" in proc.stderr.read()
    assert_left_nothing(runtime_dir)


def test_detached_child_gets_the_whole_command_line(cli: CLI, tmp_path: Path,
                                                    runtime_dir: Path) -> None:
    reg = f"--TunnelManager.registry_dir={tmp_path / 'reg'}"
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", reg)
    try:
        assert (tmp_path / "reg" / f"{info['name']}.json").exists()
        assert [t["name"] for t in cli.json("list", reg)] == [info["name"]]
        assert cli.json("list") == []
    finally:
        assert cli.run("close", info["name"], reg).returncode == 0
    assert_left_nothing(runtime_dir, info["local_port"])


def test_local_port_taken(cli: CLI, runtime_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli.run("open", "beast", "--via", "unicorn", "--local-port", str(port))
        failed(result, f"local port {port} is already in use on 127.0.0.1 (held by pid "
                       f"{os.getpid()} (")
    assert_left_nothing(runtime_dir, port)


def test_unknown_tunnel_close_and_status(cli: CLI) -> None:
    failed(cli.run("close", "nothere"), "no tunnel named 'nothere'")
    failed(cli.run("status", "../etc"), "invalid tunnel name")
    failed(cli.run("close"), "give exactly one tunnel name")


def test_launch_starts_jupyter_through_login_shell(cli: CLI, net: Sandbox,
                                                   runtime_dir: Path) -> None:
    net.stop_jupyter()
    runtime = net.home("beast") / ".local" / "share" / "jupyter" / "runtime"
    port = free_port()
    try:
        info = cli.json("open", "beast", "--via", "unicorn", "--launch", "--detach",
                        "--local-port", str(port))
        assert info["state"] == "ready", info
        from test_open import api_status

        assert api_status(info["url"]) == 200
        cli.run("close", info["name"])
    finally:
        for file in runtime.glob("jpserver-*.json"):
            pid = int(file.stem.split("-")[1])
            net.run_in("beast", ["kill", str(pid)])
        net.start_jupyter()
    assert_left_nothing(runtime_dir, port)


def test_cli_usage_errors(cli: CLI) -> None:
    import json

    failed(cli.run("open", "beast", "--via"), "option --via needs a value")
    result = cli.run("open", "beast", "--name", "--json")
    assert result.returncode == 2 and json.loads(result.stdout)["kind"] == "bad-request"
    typo = subprocess.run([sys.executable, "-m", "jupyter_tunnel", "opn", "beast"],
                          capture_output=True, text=True)
    failed(typo, "unknown command 'opn'", "open, list")
    failed(cli.run("list", "extra"), "unexpected argument 'extra'")


def test_launched_server_that_dies_at_once_is_reported_at_once(
        cli: CLI, net: Sandbox, runtime_dir: Path) -> None:
    import json
    import time

    config = net.home("beast") / ".jupyter" / "jupyter_server_config.json"
    saved = config.read_text()
    broken = json.loads(saved)
    broken["ServerApp"]["root_dir"] = "/nonexistent-jupyter-tunnel-test"
    net.stop_jupyter()
    config.write_text(json.dumps(broken))
    try:
        t0 = time.monotonic()
        result = cli.run("open", "beast", "--via", "unicorn", "--launch")
        elapsed = time.monotonic() - t0
    finally:
        config.write_text(saved)
        net.start_jupyter()
    failed(result, "JupyterLab started on beast but exited at once")
    assert elapsed < 30  # not the whole launch_timeout (60 s)
    assert "token=" not in result.stderr or "token=…" in result.stderr
    assert_left_nothing(runtime_dir)
