"""Shared fixtures: the SSH test network and an isolated registry.

Tests that need the network skip when sshd is missing, unless JT_REQUIRE_NETWORK=1
(set by .ci/run), which turns every such skip into a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jupyter_tunnel.sandbox import SSHD, Sandbox
from jupyter_tunnel.sandbox_procs import SandboxError

REQUIRE_NETWORK = os.environ.get("JT_REQUIRE_NETWORK") == "1"
#: the backend of every tunnel the tests open, in process or through the CLI (its child
#: processes inherit the variable): .ci/test runs the network tests once per backend
BACKEND = os.environ.get("JUPYTER_TUNNEL_BACKEND") or "auto"


def pytest_configure(config: pytest.Config) -> None:
    """Let the CLIs the tests start be interrupted like a terminal's Ctrl-C.

    A suite started as a background job of a script (``bash .ci/test &``, ``nohup``) gets
    SIGINT ignored, and an ignored signal stays ignored across exec: every CLI started by
    the tests would then ignore the SIGINT they send it, and Python would not even install
    its KeyboardInterrupt handler.  A handled signal is reset to the default at exec, so
    handling it here gives the children the disposition a terminal gives them.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header() -> str:
    from jupyter_tunnel.backends import BACKENDS, resolve_name

    if BACKEND not in BACKENDS:
        raise pytest.UsageError(f"JUPYTER_TUNNEL_BACKEND={BACKEND}: choose one of {BACKENDS}")
    return f"jupyter_tunnel backend: {resolve_name(BACKEND)} (JUPYTER_TUNNEL_BACKEND={BACKEND})"


def need(reason: str) -> None:
    """Skip, or fail where the environment says this must run (CI)."""
    if REQUIRE_NETWORK:
        pytest.fail(f"required but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def net() -> Iterator[Sandbox]:
    """The three-host network: this process, unicorn (jump host) and beast (Jupyter)."""
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        need("OpenSSH server not installed (apt-get install -y openssh-server)")
    sandbox = Sandbox(prefix=f"jtt{os.getpid() % 100000}")
    sandbox.start()
    if REQUIRE_NETWORK and not sandbox.netns:
        sandbox.stop()
        pytest.fail("CI must run the tests in network namespaces (as root)")
    yield sandbox
    sandbox.stop()


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Jupyter runtime dir, so the registry of the real user is never touched."""
    path = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return path


def login_sandbox(**options: Any) -> Sandbox:
    """A sandbox whose logins ask (``totp``, ``password``, ``key_passphrase``: see Sandbox);
    needs root and sshd (a PAM service, a test user)."""
    if not os.path.exists(SSHD) or os.geteuid() != 0:
        need("these logins need root and sshd (a PAM service, a test user)")
    sandbox = Sandbox(prefix=f"jtl{os.getpid() % 10000}{'t' if options.get('totp') else 'p'}",
                      **options)
    try:
        sandbox.start()
    except SandboxError as exc:
        need(str(exc))
    return sandbox


@pytest.fixture(scope="module")
def totp_net() -> Iterator[Sandbox]:
    """unicorn wants the key and then a TOTP code (``next_code()``); beast runs Jupyter."""
    sandbox = login_sandbox(totp=True)
    yield sandbox
    sandbox.stop()


class CLI:
    """Runs `python -m jupyter_tunnel …` as a user would, in the test's environment."""

    def __init__(self, ssh_config: Path | None) -> None:
        self.ssh_config = ssh_config

    def argv(self, *args: str) -> list[str]:
        extra = ["--ssh-config", str(self.ssh_config)] if self.ssh_config else []
        return [sys.executable, "-m", "jupyter_tunnel", *args, *extra]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.stdout.strip(), result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(net: Sandbox) -> CLI:
    return CLI(net.ssh_config)


@pytest.fixture
def plain_cli() -> CLI:
    return CLI(None)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port (a connect is refused)."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def foreground(argv: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run a command that prints a tunnel URL and stays up; yield it and the URL.

    The process is killed on the way out if the test did not end it.
    """
    proc = subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            proc.kill()
            pytest.fail(f"no URL printed: {url!r}\n{proc.stderr.read()}")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


#: the benchmarks' folder (benchmarks/ beside tests/)
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/NAME.py`` as module ``bench_NAME`` (it puts benchmarks/ on
    sys.path for its own imports)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
