"""The Binder setup: binder/start brings up the demo network as an unprivileged user in a
fresh virtual environment, and binder/demo.ipynb runs top to bottom headless (nbclient).

The fresh venv is made by Debian's /usr/bin/python3 (the project venv's interpreter lives
under /root, out of an unprivileged user's reach). It holds nothing of its own: a .pth file
adds the project venv's site-packages (dependencies and this tree, installed editable), as
--system-site-packages would. Installing with binder/postBuild (`pip install .`) is left to
Binder: it builds the JupyterLab panel with Node.js and npm, which takes minutes here.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import need

from jupyter_tunnel.sandbox import SSHD

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parent.parent
BASE_PYTHON = "/usr/bin/python3"
ARTIFACTS = ROOT / "test-artifacts" / "binder"
RUN_NOTEBOOK = """
import sys
import nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3", timeout=120, store_widget_state=True,
               resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


def processes_of(uid: int) -> list[int]:
    """Pids running as uid (for the throwaway user: only what this test started).

    Zombies are left out: they run nothing, cannot be killed, and one left unreaped by a
    parent elsewhere keeps the uid of a user removed since, which a new throwaway user may
    be given (seen on a machine shared with other test runs).
    """
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                found.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return found


def describe(pids: list[int]) -> str:
    """pid, state, parent and command line of each process, for an assertion's message."""
    lines = []
    for pid in pids:
        try:
            state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"pid {pid} ({state}, parent {ppid}): {cmd.strip()}")
        except (OSError, ValueError):
            lines.append(f"pid {pid} (gone)")
    return "; ".join(lines)


def started_for(user: User) -> list[int]:
    """What the test started as ``user`` and is still running: as a throwaway user, every
    process of that user; as oneself, the processes that inherited the test's HOME."""
    if user.uid != os.getuid():
        return processes_of(user.uid)
    mark = f"HOME={user.home}".encode()
    found = []
    for pid in processes_of(user.uid):
        try:
            if pid != os.getpid() and mark in Path(f"/proc/{pid}/environ").read_bytes().split(
                    b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture
def binder_user() -> Iterator[User]:
    """An unprivileged user with an empty home: a throwaway one when running as root."""
    home = Path(tempfile.mkdtemp(prefix="jt-binder-"))
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.getuid())
        try:
            yield User(pw.pw_name, pw.pw_uid, pw.pw_gid, home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return
    name = f"jtb{os.getpid() % 100000}"
    made = subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                           "/bin/bash", "--user-group", name], capture_output=True, text=True)
    if made.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        need(f"cannot create a throwaway user: {made.stderr.strip()}")
    pw = pwd.getpwnam(name)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    try:
        yield User(name, pw.pw_uid, pw.pw_gid, home)
    finally:
        deadline = time.monotonic() + 10
        while (left := processes_of(pw.pw_uid)) and time.monotonic() < deadline:
            for pid in left:  # all started by this test, as that user
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        removed = subprocess.run(["userdel", name], capture_output=True, text=True)
        if removed.returncode != 0:
            removed = subprocess.run(["userdel", "-f", name], capture_output=True, text=True)
        shutil.rmtree(home, ignore_errors=True)
        assert removed.returncode == 0, f"throwaway user {name} left behind: {removed.stderr}"


def outputs(nb: nbformat.NotebookNode, kind: str) -> list[nbformat.NotebookNode]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
            if o.output_type == kind]


def test_binder_start_and_demo_notebook_as_unprivileged_user(binder_user: User) -> None:
    if not os.path.exists(SSHD):
        need("OpenSSH server not installed (apt-get install -y openssh-server)")
    version = subprocess.run([BASE_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        need(f"{BASE_PYTHON} must be Python {sys.version_info[:2]} like the project venv")
    for script in ("start", "postBuild"):
        assert subprocess.run(["bash", "-n", str(ROOT / "binder" / script)]).returncode == 0
    user, home = binder_user, binder_user.home

    def as_user(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=[], cwd=home,
                              env=env, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]

    # the repository as Binder checks it out, and a fresh venv
    shutil.copytree(ROOT / "binder", home / "repo" / "binder")
    # the package too: the checkout may sit in a folder the throwaway user cannot read
    shutil.copytree(ROOT / "jupyter_tunnel", home / "repo" / "jupyter_tunnel",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = home / "venv"
    env = {"HOME": str(home), "USER": user.name, "LOGNAME": user.name, "SHELL": "/bin/bash",
           "LANG": "C.UTF-8", "PATH": f"{venv}/bin:/usr/bin:/bin",
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
           "TMPDIR": str(home)}  # the demo network's folder goes where the test removes it
    (home / "run_notebook.py").write_text(RUN_NOTEBOOK)
    for path in [home / "repo", *(home / "repo").rglob("*"), home / "run_notebook.py"]:
        os.chown(path, user.uid, user.gid)
    made = as_user([BASE_PYTHON, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    packages = sysconfig.get_paths()["purelib"]
    site = as_user([f"{venv}/bin/python", "-c", "import sysconfig; "
                    "print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # the project venv's packages, hard-linked (copied across file systems) into the
    # user's home: the checkout and its venv may sit where that user cannot read
    shared = home / "site-packages"
    try:
        shutil.copytree(packages, shared, copy_function=os.link,
                        ignore=shutil.ignore_patterns("__pycache__"))
    except OSError:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.copytree(packages, shared, ignore=shutil.ignore_patterns("__pycache__"))
    pth = Path(site) / "_project_venv.pth"
    pth.write_text(f"{home / 'repo'}\nimport site; site.addsitedir({str(shared)!r})\n")
    os.chown(pth, user.uid, user.gid)
    where = as_user(["python", "-c", "import jupyter_tunnel, sys; print(sys.prefix)"])
    assert where.stdout.strip() == str(venv), where.stderr

    # binder/start, then the command Binder would give it; here: run the demo notebook
    t0 = time.monotonic()
    result = as_user([str(home / "repo" / "binder" / "start"), "python",
                      str(home / "run_notebook.py"), str(home / "repo" / "binder" / "demo.ipynb"),
                      str(home / "demo-out.ipynb"), str(home / "repo")], timeout=240)
    elapsed = time.monotonic() - t0
    log = (home / ".jupyter-tunnel-demo" / "network.log")
    network_log = log.read_text() if log.exists() else "(no log)"
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- network log:\n{network_log}"
    assert "demo network ready" in network_log and "netns" not in network_log

    nb = nbformat.read(str(home / "demo-out.ipynb"), as_version=4)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(home / "demo-out.ipynb", ARTIFACTS / "demo-executed.ipynb")
    assert outputs(nb, "error") == []
    stdout = "".join(o.text for o in outputs(nb, "stream") if o.name == "stdout")
    assert "Host unicorn" in stdout
    assert "tunnel beast is ready: unicorn -> beast on 127.0.0.1:" in stdout
    assert "beast's Jupyter answers: {" in stdout
    assert "scripted ready http://127.0.0.1:" in stdout and "scripted closed" in stdout
    assert "closed beast" in stdout
    stderr = "".join(o.text for o in outputs(nb, "stream") if o.name == "stderr")
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    badges = [m["state"]["value"] for m in state.values()
              if "jt-state" in m["state"].get("_dom_classes", [])]
    assert len(badges) == 2 and all('data-state="closed"' in b for b in badges)
    messages = [m["state"]["value"] for m in state.values()
                if "jt-message" in m["state"].get("_dom_classes", [])]
    assert any("reusing it" in m for m in messages)

    # the notebook's command has ended: the network goes away by itself, leaving nothing
    deadline = time.monotonic() + 20
    while started_for(user) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = started_for(user)
    assert left == [], f"demo network still running after its server ended: {describe(left)}"
    assert not (home / ".jupyter-tunnel-demo" / "ssh_config").exists()
    assert "demo network removed" in log.read_text()
    registry = home / "runtime" / "jupyter_tunnel"
    assert not registry.exists() or not list(registry.glob("*.json"))
    assert elapsed < 120, f"took {elapsed:.0f} s"
