"""Remote kernels: beast's kernels listed and installed from the shell, and run from a local
kernel manager (the `jupyter-tunnel` provisioner) through a tunnel via unicorn: a cell runs
in beast's network namespace, an interrupt stops `time.sleep(120)` within 2 s, a restart and
a shutdown leave no kernel on beast and no port bound here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import port_is_free

from jupyter_tunnel.errors import KernelSpecNotFound, SpecError
from jupyter_tunnel.kernels import specs
from jupyter_tunnel.kernels.remote import RemoteKernels
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox

JUPYTER = [sys.executable, "-m", "jupyter_tunnel"]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Jupyter data folder: kernelspecs installed by a test land there."""
    path = tmp_path / "data"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(path))
    return path


# --- without a network ------------------------------------------------------------------


def test_spec_names() -> None:
    assert specs.spec_name("beast", "python3") == "beast-python3"
    assert specs.spec_name("Alice@Beast.example.org:2222", "ir") == "beast.example.org-ir"


def test_install_list_remove(data_dir: Path) -> None:
    info = specs.install("beast", ["unicorn"], "python3",
                         {"display_name": "Python 3 (ipykernel)", "language": "python"},
                         ssh_config="/x/config", cwd="/data")
    assert info["name"] == "beast-python3"
    spec = json.loads((data_dir / "kernels" / "beast-python3" / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (ipykernel) on beast"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "jupyter-tunnel",
        "config": {"target": "beast", "via": ["unicorn"], "remote_kernel": "python3",
                   "ssh_config": "/x/config", "cwd": "/data"}}
    assert [k["name"] for k in specs.installed()] == ["beast-python3"]
    foreign = data_dir / "kernels" / "mine"
    foreign.mkdir()
    (foreign / "kernel.json").write_text(json.dumps({"argv": ["x"], "display_name": "Mine",
                                                     "language": "python"}))
    with pytest.raises(KernelSpecNotFound, match="not installed by jupyter tunnel"):
        specs.remove("mine")
    with pytest.raises(KernelSpecNotFound, match="no kernelspec named 'nope'"):
        specs.remove("nope")
    specs.remove("beast-python3")
    assert not (data_dir / "kernels" / "beast-python3").exists()
    assert foreign.exists()
    taken = data_dir / "kernels" / "beast-ir"
    taken.mkdir()
    (taken / "kernel.json").write_text(json.dumps({"argv": ["R"], "display_name": "Mine",
                                                   "language": "R"}))
    with pytest.raises(SpecError, match=r"'beast-ir' exists .* jupyter tunnel did not install"):
        specs.install("beast", [], "ir", {"display_name": "R"})
    assert json.loads((taken / "kernel.json").read_text())["display_name"] == "Mine"


def _local(command: str, timeout: float, stdin: str | None) -> tuple[int, str, str]:
    out = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, text=True,
                         timeout=timeout, check=False)
    return out.returncode, out.stdout, out.stderr


def test_the_nanny_refuses_bad_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    kernels = RemoteKernels(_local, "here", os.getpid())
    for request, words in [({"action": "start", "id": "../x"}, "id must be"),
                           ({"action": "start", "id": "k1", "kernel": "python3", "key": "k",
                             "signature_scheme": "hmac-sha256", "orphan_after": 60,
                             "cwd": str(tmp_path / "none")}, "no such folder"),
                           ({"action": "start", "id": "k1", "kernel": "nope", "key": "k",
                             "signature_scheme": "hmac-sha256", "orphan_after": 60},
                            "no kernel named 'nope'"),
                           ({"action": "signal", "id": "k9", "signum": 2}, "no such kernel"),
                           ({"action": "rm -rf"}, "unknown action")]:
        with pytest.raises(Exception, match=words):
            kernels.ask(request)


# --- on the three-host network ------------------------------------------------------------


@pytest.fixture
def registry(runtime_dir: Path) -> TunnelManager:
    """A manager that reads this test's registry (the provisioner has its own)."""
    return TunnelManager(owner="python")


def _cli(net: Sandbox, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JUPYTER, *argv, "--ssh-config", str(net.ssh_config)],
                          capture_output=True, text=True, timeout=120, check=False)


def _beast_has(net: Sandbox, pid: int) -> bool:
    return net.run_in("beast", ["kill", "-0", str(pid)], capture_output=True).returncode == 0


def _kernel_files(net: Sandbox) -> list[str]:
    folder = net.home("beast") / ".cache" / "jupyter_tunnel" / "kernels"
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.mark.network
def test_list_and_install_from_the_shell(net: Sandbox, data_dir: Path) -> None:
    listed = _cli(net, "kernels", "list", "beast", "--via", "unicorn", "--json")
    assert listed.returncode == 0, listed.stderr
    kernels = json.loads(listed.stdout)["kernels"]
    assert {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python",
            "interrupt_mode": "signal"} in kernels
    wrong = _cli(net, "kernels", "install", "beast", "via", "unicorn", "--kernel", "nope")
    assert wrong.returncode == 2
    assert "beast has no kernel 'nope': it offers python3" in wrong.stderr
    done = _cli(net, "kernels", "install", "beast", "via", "unicorn", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["installed"][0]["display_name"] == \
        "Python 3 (ipykernel) on beast"
    seen = subprocess.run([sys.executable, "-m", "jupyter_client.kernelspecapp", "list",
                           "--json"], capture_output=True, text=True, check=True)
    assert "beast-python3" in json.loads(seen.stdout)["kernelspecs"]
    gone = _cli(net, "kernels", "remove", "--all", "--json")
    assert json.loads(gone.stdout) == {"removed": ["beast-python3"]}


def _run(kc: Any, code: str, timeout: float = 60) -> tuple[str, dict[str, Any]]:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append(msg["content"]["ename"])

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out), reply["content"]


@pytest.mark.network
def test_a_kernel_on_beast(net: Sandbox, data_dir: Path, registry: TunnelManager) -> None:
    from jupyter_client.manager import KernelManager

    specs.install("beast", ["unicorn"], "python3", {"display_name": "Python 3",
                                                    "language": "python"},
                  ssh_config=str(net.ssh_config))
    beast_ns = net.run_in("beast", ["readlink", "/proc/self/ns/net"], capture_output=True,
                          text=True).stdout.strip()
    km = KernelManager(kernel_name="beast-python3")
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        out, reply = _run(kc, "import os; print(os.readlink('/proc/self/ns/net'), os.getcwd(), "
                              "os.getpid())")
        assert reply["status"] == "ok"
        ns, cwd, pid = out.split()
        assert ns == beast_ns != os.readlink("/proc/self/ns/net")
        assert net.jupyter is not None and cwd == str(net.jupyter.root_dir)
        assert _beast_has(net, int(pid))
        tunnel = km.provisioner._tunnel  # type: ignore[union-attr]
        assert [r["name"] for r in registry.list()] == [tunnel.name]
        ports = [f["local_port"] for f in tunnel.to_dict()["forwards"]]
        assert len(ports) == 5 and not any(port_is_free(p) for p in ports)
        shown = subprocess.run([*JUPYTER, "status", tunnel.name], capture_output=True,
                               text=True, check=True).stdout
        assert f"kernel:      beast-python3 on beast (pid {pid} there)" in shown

        kc.execute("import time; time.sleep(120)")
        time.sleep(1.0)
        started = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=10)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - started < 2.0

        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        out, _ = _run(kc, "import os; print(os.getpid())")
        assert int(out) != int(pid)
        assert not _beast_has(net, int(pid)), "the restart left the old kernel on beast"
        pid = out.strip()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not _beast_has(net, int(pid))
    assert _kernel_files(net) == []
    assert registry.list() == []


@pytest.mark.network
def test_a_kernel_that_cannot_start_leaves_no_tunnel(net: Sandbox, data_dir: Path,
                                                     registry: TunnelManager) -> None:
    from jupyter_client.manager import KernelManager

    specs.install("beast", ["unicorn"], "nope", {"display_name": "Nope", "language": "x"},
                  ssh_config=str(net.ssh_config))
    km = KernelManager(kernel_name="beast-nope")
    with pytest.raises(Exception, match="no kernel named 'nope' here"):
        km.start_kernel()
    assert registry.list() == []


OWNER = """
import json, os, sys, time
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
# the connection file in the test's runtime folder: this process is killed, nothing removes it
km = KernelManager(kernel_name=sys.argv[1],
                   connection_file=os.path.join(jupyter_runtime_dir(), "kernel-owner.json"))
km.start_kernel()
print(json.dumps(km.provisioner._tunnel.kernel), flush=True)
time.sleep(600)
"""


def _orphan(net: Sandbox, data_dir: Path, orphan_after: float | None = None
            ) -> dict[str, Any]:
    """A remote kernel whose owner process was SIGKILLed: its record."""
    specs.install("beast", ["unicorn"], "python3", {"display_name": "Python 3",
                                                    "language": "python"},
                  ssh_config=str(net.ssh_config))
    spec_file = data_dir / "kernels" / "beast-python3" / "kernel.json"
    if orphan_after is not None:
        spec = json.loads(spec_file.read_text())
        spec["metadata"]["kernel_provisioner"]["config"]["orphan_after"] = orphan_after
        spec_file.write_text(json.dumps(spec))
    owner = subprocess.Popen([sys.executable, "-c", OWNER, "beast-python3"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        kernel = json.loads(owner.stdout.readline())
    finally:
        owner.kill()
        owner.wait()
    assert _beast_has(net, kernel["pid"])
    return dict(kernel)


@pytest.mark.network
def test_cleanup_ends_the_kernel_of_a_killed_owner(net: Sandbox, data_dir: Path) -> None:
    kernel = _orphan(net, data_dir)
    shown = json.loads(subprocess.run([*JUPYTER, "kernels", "running", "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    [running] = shown["kernels"]
    assert running["remote_pid"] == kernel["pid"] and running["state"] == "orphaned"
    assert running["kernel"] == "beast-python3" and running["target"] == "beast"
    done = subprocess.run([*JUPYTER, "cleanup", "--json"], capture_output=True, text=True,
                          timeout=120, check=True)
    report = json.loads(done.stdout)
    assert any(e.get("command") == "the remote kernel on beast" and
               e["pid"] == kernel["pid"] for e in report["ended"]), report
    assert not _beast_has(net, kernel["pid"])
    assert _kernel_files(net) == []
    again = json.loads(subprocess.run([*JUPYTER, "kernels", "running", "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert again == {"kernels": []}


@pytest.mark.network
def test_a_kernel_nobody_comes_back_for_ends_by_itself(net: Sandbox, data_dir: Path) -> None:
    kernel = _orphan(net, data_dir, orphan_after=4)
    deadline = time.monotonic() + 30
    while _beast_has(net, kernel["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _beast_has(net, kernel["pid"]), "the kernel outlived orphan_after"
    subprocess.run([*JUPYTER, "cleanup"], capture_output=True, timeout=120, check=True)
    assert _kernel_files(net) == []


LINES = 40  # as the user: a line a second for 40 s, the link cut for 20 s


@pytest.mark.network
def test_a_cell_printing_through_an_outage_loses_no_line(net: Sandbox, data_dir: Path
                                                        ) -> None:
    from jupyter_client.manager import KernelManager

    if not net.netns:
        pytest.skip("cutting the link needs the namespace network")
    from traitlets.config import Config

    specs.install("beast", ["unicorn"], "python3", {"display_name": "Python 3",
                                                    "language": "python"},
                  ssh_config=str(net.ssh_config))
    # the kernel's tunnel takes c.TunnelManager.* from its kernel manager's config
    config = Config({"TunnelManager": {"keepalive_interval": 1, "keepalive_count_max": 2}})
    km = KernelManager(kernel_name="beast-python3", config=config)
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        tunnel = km.provisioner._tunnel  # type: ignore[union-attr]
        assert tunnel.settings.keepalive_interval == 1
        msg_id = kc.execute(f"import time\nfor i in range({LINES}):\n"
                            "    print('line', i, flush=True)\n    time.sleep(1)")
        lines: list[str] = []
        status, idle, cut, alive_meanwhile = "", False, False, []
        deadline = time.monotonic() + 120
        while not (status and idle):
            assert time.monotonic() < deadline, f"stuck after {len(lines)} lines"
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty: nothing this second (the outage)
                msg = None
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                kind = msg["msg_type"]
                if kind == "stream":
                    lines += msg["content"]["text"].splitlines()
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            if len(lines) >= 4 and not cut:
                cut = True
                net.cut_link()  # a silent outage, as Wi-Fi gone
                try:
                    until = time.monotonic() + 20
                    while time.monotonic() < until:
                        alive_meanwhile.append((tunnel.state.value, km.is_alive()))
                        time.sleep(0.5)
                finally:
                    net.restore_link()
            if idle and not status:
                status = kc.get_shell_msg(timeout=30)["content"]["status"]
        assert lines == [f"line {i}" for i in range(LINES)]
        assert status == "ok"
        assert ("reconnecting", True) in alive_meanwhile, alive_meanwhile[-3:]
        assert all(alive for _, alive in alive_meanwhile), "the outage counted as death"
        assert tunnel.reconnects >= 1
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert _kernel_files(net) == []


@pytest.mark.network
def test_kernels_from_a_notebook(net: Sandbox, data_dir: Path, tmp_path: Path) -> None:
    from test_magics import Kernel, loaded, text

    k = Kernel(tmp_path)
    with k.client.setup_kernel(env=k.env):
        loaded(k, net)
        cell = k.run("%tunnel kernels list beast via unicorn")
        assert "python3" in text(cell) and "Python 3 (ipykernel)" in text(cell)
        cell = k.run("%tunnel kernels install beast via unicorn --kernel python3")
        assert "installed beast-python3: Python 3 (ipykernel) on beast" in text(cell)
        assert (data_dir / "kernels" / "beast-python3" / "kernel.json").exists()
        cell = k.run("%tunnel kernels list beast --cwd /tmp", error=True)
        assert "UsageError: --cwd does not apply to %tunnel kernels list" in text(cell, "stderr")
        cell = k.run("%tunnel kernels remove python3", error=True)
        assert "UsageError: kernelspec 'python3' was not installed by jupyter tunnel" in \
            text(cell, "stderr")
        cell = k.run("%tunnel kernels start", error=True)
        assert "UsageError: %tunnel kernels list TARGET" in text(cell, "stderr")
        cell = k.run("%tunnel kernels running")
        assert "No remote kernels." in text(cell)
        cell = k.run("%tunnel kernels remove --all")
        assert "removed beast-python3" in text(cell)
    assert not (data_dir / "kernels" / "beast-python3").exists()


@pytest.mark.network
def test_a_kernel_whose_owner_is_there_lives_past_orphan_after(
        net: Sandbox, data_dir: Path, registry: TunnelManager) -> None:
    from jupyter_client.manager import KernelManager

    specs.install("beast", ["unicorn"], "python3", {"display_name": "Python 3",
                                                    "language": "python"},
                  ssh_config=str(net.ssh_config))
    spec_file = data_dir / "kernels" / "beast-python3" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    # a beat every 1.5 s (a quarter): a slow one under load still comes well within 6 s
    spec["metadata"]["kernel_provisioner"]["config"]["orphan_after"] = 6
    spec_file.write_text(json.dumps(spec))
    km = KernelManager(kernel_name="beast-python3")
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        time.sleep(14)  # nobody polls: only the owner's heartbeat tells beast it is there
        out, reply = _run(kc, "print(6 * 7)")
        assert reply["status"] == "ok" and out.strip() == "42"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert _kernel_files(net) == []


OWNER_SHUTDOWN = """
import json, os, sys
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_runtime_dir
from traitlets.config import Config
config = Config({"TunnelManager": {"keepalive_interval": 1, "keepalive_count_max": 2}})
km = KernelManager(kernel_name=sys.argv[1], config=config,
                   connection_file=os.path.join(jupyter_runtime_dir(), "kernel-owner.json"))
km.start_kernel()
print(json.dumps(km.provisioner._tunnel.kernel), flush=True)
sys.stdin.readline()
km.shutdown_kernel(now=True)  # the link is cut: beast cannot be told
print("shut", flush=True)
"""


@pytest.mark.network
def test_a_shutdown_during_an_outage_leaves_the_kernel_to_cleanup(net: Sandbox,
                                                                  data_dir: Path) -> None:
    if not net.netns:
        pytest.skip("cutting the link needs the namespace network")
    specs.install("beast", ["unicorn"], "python3", {"display_name": "Python 3",
                                                    "language": "python"},
                  ssh_config=str(net.ssh_config))
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SHUTDOWN, "beast-python3"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdin is not None
        kernel = json.loads(owner.stdout.readline())
        net.cut_link()
        try:
            deadline = time.monotonic() + 30
            while not any(r["state"] == "reconnecting" for r in TunnelManager().list()):
                assert time.monotonic() < deadline, "the cut was not noticed"
                time.sleep(0.2)
            owner.stdin.write("go\n")
            owner.stdin.flush()
            assert owner.stdout.readline().strip() == "shut"  # no exception, no hang
            assert owner.wait(30) == 0
        finally:
            net.restore_link()
    finally:
        owner.kill()
        owner.wait()
    assert _beast_has(net, kernel["pid"])  # beast could not be told: it runs on
    [record] = TunnelManager().list()
    assert record["orphaned"] and record["kernel"]["pid"] == kernel["pid"]
    report = json.loads(subprocess.run([*JUPYTER, "cleanup", "--json"], capture_output=True,
                                       text=True, timeout=120, check=True).stdout)
    assert any(e.get("command") == "the remote kernel on beast" for e in report["ended"])
    assert not _beast_has(net, kernel["pid"]) and _kernel_files(net) == []
