"""The registry: private files, atomic writes, one live owner per name, dead owners seen."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_tunnel import procinfo
from jupyter_tunnel.errors import ConfigError, TunnelExists
from jupyter_tunnel.registry import Registry


def record(name: str, pid: int | None = None, started: int | None = None) -> dict[str, object]:
    if pid is None:
        pid, started = procinfo.self_identity()
    return {"name": name, "pid": pid, "started": started, "state": "ready", "owner": "cli"}


def test_default_location_and_modes(runtime_dir: Path) -> None:
    reg = Registry()
    reg.write(record("beast"))
    assert reg.path == runtime_dir / "jupyter_tunnel"
    assert reg.path.stat().st_mode & 0o777 == 0o700
    assert (reg.path / "beast.json").stat().st_mode & 0o777 == 0o600
    assert [r["name"] for r in reg.all()] == ["beast"]
    assert reg.all()[0]["orphaned"] is False


def test_loose_folder_mode_is_tightened_and_foreign_folder_refused(tmp_path: Path) -> None:
    folder = tmp_path / "reg"
    folder.mkdir(mode=0o755)
    Registry(folder).write(record("x"))
    assert folder.stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        Registry(link).write(record("y"))


def test_claim_refuses_a_live_name_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.claim(record("beast"))
    with pytest.raises(TunnelExists, match="already open"):
        reg.claim(record("beast"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    reg.write(record("old", int(dead), 1))
    assert reg.all()[-1]["orphaned"] is True
    assert reg.unique_name("beast") == "beast-2"
    assert reg.unique_name("old") == "old"
    reg.claim(record("old"))
    assert reg.read("old")["pid"] == os.getpid()  # type: ignore[index]


def test_pid_reuse_is_not_liveness(tmp_path: Path) -> None:
    pid, started = procinfo.self_identity()
    assert started is not None
    assert procinfo.is_alive(pid, started)
    assert not procinfo.is_alive(pid, started + 1)  # same pid, another start time


def test_remove_only_by_owner(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.write(record("beast"))
    assert not reg.remove("beast", owner_pid=1)
    assert reg.remove("beast", owner_pid=os.getpid())
    assert reg.all() == []


def test_corrupt_files_are_skipped(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.write(record("good"))
    (tmp_path / "bad.json").write_text("{not json")
    assert [r["name"] for r in reg.all()] == ["good"]


def _writer(path: str, index: int) -> None:
    reg = Registry(path)
    for n in range(10):
        reg.claim(record(f"t{index}-{n}"))
        reg.update(f"t{index}-{n}", os.getpid(), state="closed", n=n)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 50
    for file in files:
        data = json.loads(file.read_text())
        assert data["state"] == "closed"
    assert not list(tmp_path.glob(".tmp-*"))


def test_core_imports_no_jupyter_server_tornado_ipython_or_widgets() -> None:
    code = (
        "import sys, jupyter_tunnel.manager, jupyter_tunnel.tunnel, jupyter_tunnel.registry, "
        "jupyter_tunnel.backends.sshtunnel_backend, jupyter_tunnel.detect, "
        "jupyter_tunnel.sshconfig, jupyter_tunnel.hostkeys\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('jupyter_server', 'tornado', 'IPython', 'ipywidgets', 'ipykernel')]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_exited_but_unreaped_process_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procinfo.start_time(child.pid)
    for _ in range(200):
        if not procinfo.is_alive(child.pid, started):
            break
        subprocess.run(["sleep", "0.01"])
    assert not procinfo.is_alive(child.pid, started)
    assert Path(f"/proc/{child.pid}").exists()  # still a zombie: we have not reaped it
    child.wait()
