"""Logins that ask, with the in-process (sshtunnel/paramiko) backend: a jump host that wants
the key AND a TOTP code (PAM, pam_oath), a password login, a passphrase-locked key.  The
questions reach the front end's callback naming the hop; a wrong answer is refused once and
leaves nothing; no answer is an AnswerNeeded saying which hop asks what; an unanswered
question times out; the CLI asks on its terminal.  Answers are never in the registry, the
log, or any process's argv or environment."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pty
import select
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, login_sandbox
from test_faults import assert_left_nothing

from jupyter_tunnel import open_tunnel
from jupyter_tunnel.backends.sshtunnel_backend import SSHTunnelBackend
from jupyter_tunnel.errors import AnswerNeeded, AnswerRefused, AnswerTimeout
from jupyter_tunnel.login.questions import Question
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import Hop
from jupyter_tunnel.sshconfig import ResolvedHop, SSHConfig, resolve_chain
from jupyter_tunnel.state import State

pytestmark = pytest.mark.network
PASSPHRASE = "a test passphrase 42"


@pytest.fixture(scope="module")
def totp_net() -> Iterator[Sandbox]:
    """unicorn wants the key and then a TOTP code; beast runs Jupyter."""
    sandbox = login_sandbox(totp=True)
    yield sandbox
    sandbox.stop()
    assert not os.path.lexists(f"/usr/local/sbin/sshd-{sandbox.prefix}-unicorn")
    assert not os.path.exists(f"/etc/pam.d/sshd-{sandbox.prefix}-unicorn")


@pytest.fixture(scope="module")
def pw_net() -> Iterator[Sandbox]:
    """unicorn-pw: a password login; unicorn-locked: the key behind a passphrase."""
    sandbox = login_sandbox(password=True, key_passphrase=PASSPHRASE, jupyter=False)
    user = sandbox.password_user
    yield sandbox
    sandbox.stop()
    import pwd

    with pytest.raises(KeyError):
        pwd.getpwnam(user)  # the test user is gone with the sandbox


def _manager(net: Sandbox, **traits: Any) -> TunnelManager:
    return TunnelManager(ssh_config=str(net.ssh_config), backend="sshtunnel", **traits)


def _chain(net: Sandbox, via: str) -> list[ResolvedHop]:
    return resolve_chain(Hop("beast"), (Hop(via),), SSHConfig(str(net.ssh_config)))


def _http_status(port: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=20) as reply:
        return int(reply.status)


def _registry_text(runtime_dir: Path) -> str:
    folder = runtime_dir / "jupyter_tunnel"
    return "".join(p.read_text() for p in folder.glob("*.json")) if folder.exists() else ""


def _secret_in_processes(secret: str) -> list[str]:
    """Processes whose argv holds ``secret`` as an argument, or whose environment holds it
    as a value."""
    found, token = [], secret.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if token in args or any(e.endswith(b"=" + token) for e in env):
            found.append(proc.name)
    return found


def _assert_secret_nowhere(secret: str, runtime_dir: Path, log_text: str) -> None:
    assert secret not in _registry_text(runtime_dir)
    assert secret not in log_text
    assert _secret_in_processes(secret) == []


# a key and a TOTP code, through the Python API ------------------------------------------
def test_totp_code_is_asked_and_the_tunnel_works_also_after_a_reconnect(
        totp_net: Sandbox, runtime_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = totp_net
    assert net.jupyter is not None
    caplog.set_level(logging.DEBUG)
    asked: list[tuple[str, str, bool]] = []
    codes: list[str] = []
    seen: list[dict[str, Any]] = []  # the registry's view while the question waits

    def prompt(hop: str, text: str, echo: bool) -> str:
        asked.append((hop, text, echo))
        records = [json.loads(p.read_text()) for p in (runtime_dir / "jupyter_tunnel")
                   .glob("*.json")]
        seen.extend(records)
        codes.append(net.next_code())
        return codes[-1]

    manager = _manager(net)
    tunnel = open_tunnel("beast", via="unicorn", manager=manager, prompt=prompt)
    try:
        assert asked == [("unicorn", "One-time password (OATH) for `root': ", False)]
        assert len(seen) == 1 and seen[0]["prompt"]["hop"] == "unicorn"
        assert "One-time password" in seen[0]["prompt"]["text"]
        assert "waiting for an answer: unicorn (" in seen[0]["problem"]
        assert tunnel.to_dict()["prompt"] is None and tunnel.problem is None
        assert tunnel.local_port is not None
        assert _http_status(tunnel.local_port, net.jupyter.token) == 200
        # a reconnect logs in again: the code is asked again, through the same callback
        net.kill_sessions("unicorn")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                tunnel.reconnects >= 1 and tunnel.state is State.READY):
            time.sleep(0.2)
        assert tunnel.reconnects >= 1 and tunnel.state is State.READY, tunnel.to_dict()
        assert [a[0] for a in asked] == ["unicorn", "unicorn"]
        assert _http_status(tunnel.local_port, net.jupyter.token) == 200
        for code in codes:
            _assert_secret_nowhere(code, runtime_dir, caplog.text)
    finally:
        manager.close_all()
    assert_left_nothing(runtime_dir, tunnel.local_port)


def test_a_wrong_code_is_refused_once_naming_the_jump_host(
        totp_net: Sandbox, runtime_dir: Path) -> None:
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        right = totp_net.next_code()
        return "000000" if right != "000000" else "111111"

    with pytest.raises(AnswerRefused) as caught:
        open_tunnel("beast", via="unicorn", manager=_manager(totp_net, resume=False), ask=ask)
    assert caught.value.hop == "unicorn" and caught.value.kind == "auth"
    assert "unicorn (" in str(caught.value) and "refused the answer" in str(caught.value)
    assert "One-time password" in str(caught.value)
    assert len(asked) == 1  # once: PAM counts every try
    assert_left_nothing(runtime_dir)


def test_without_ask_a_code_is_answer_needed_naming_the_jump_host(
        totp_net: Sandbox, runtime_dir: Path) -> None:
    with pytest.raises(AnswerNeeded) as caught:
        open_tunnel("beast", via="unicorn", manager=_manager(totp_net, resume=False))
    message = str(caught.value)
    assert caught.value.hop == "unicorn"
    assert message.startswith("unicorn (") and "accepted the key of root" in message
    assert "one-time code" in message and "One-time password (OATH)" in message
    assert "Check User and IdentityFile" not in message
    assert_left_nothing(runtime_dir)


def test_an_unanswered_question_times_out(totp_net: Sandbox, runtime_dir: Path) -> None:
    release = threading.Event()

    def ask(question: Question) -> str:
        release.wait(60)  # a person who never answers
        return ""

    manager = _manager(totp_net, resume=False, answer_timeout=1.5)
    began = time.monotonic()
    try:
        with pytest.raises(AnswerTimeout) as caught:
            open_tunnel("beast", via="unicorn", manager=manager, ask=ask)
    finally:
        release.set()
    assert time.monotonic() - began < 15
    assert caught.value.hop == "unicorn"
    assert "no answer to 'One-time password" in str(caught.value)
    assert "within 1.5 s" in str(caught.value)
    assert_left_nothing(runtime_dir)


# a password, a key's passphrase (the backend alone) -----------------------------------
def _connect(chain: list[ResolvedHop], ask: Any) -> SSHTunnelBackend:
    backend = SSHTunnelBackend()
    try:
        backend.connect(chain, timeout=10, ask=ask)
    except BaseException:
        backend.close()
        raise
    return backend


def test_password_login_asks_for_the_password(
        pw_net: Sandbox, caplog: pytest.LogCaptureFixture, runtime_dir: Path) -> None:
    caplog.set_level(logging.DEBUG)
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        return pw_net.password

    backend = _connect(_chain(pw_net, "unicorn-pw"), ask)
    try:
        status, out, _ = backend.run("echo on-beast")
        assert (status, out.strip()) == (0, "on-beast")
    finally:
        backend.close()
    assert [(q.hop, q.kind, q.echo) for q in asked] == [("unicorn-pw", "password", False)]
    assert asked[0].text.startswith(f"{pw_net.password_user}@")
    assert asked[0].display.startswith("unicorn-pw (")
    _assert_secret_nowhere(pw_net.password, runtime_dir, caplog.text)


def test_a_wrong_password_is_refused_once(pw_net: Sandbox) -> None:
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        return "not the password"

    with pytest.raises(AnswerRefused) as caught:
        _connect(_chain(pw_net, "unicorn-pw"), ask)
    assert caught.value.hop == "unicorn-pw" and "refused the answer" in str(caught.value)
    assert len(asked) == 1


def test_without_ask_a_password_is_answer_needed(pw_net: Sandbox) -> None:
    with pytest.raises(AnswerNeeded) as caught:
        _connect(_chain(pw_net, "unicorn-pw"), None)
    assert caught.value.hop == "unicorn-pw"
    assert f"asks {pw_net.password_user} for a password" in str(caught.value)


def test_a_locked_key_asks_for_its_passphrase(pw_net: Sandbox) -> None:
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        return PASSPHRASE

    backend = _connect(_chain(pw_net, "unicorn-locked"), ask)
    try:
        assert backend.run("echo on-beast")[1].strip() == "on-beast"
    finally:
        backend.close()
    assert [(q.hop, q.kind, q.echo) for q in asked] == [("unicorn-locked", "passphrase", False)]
    assert asked[0].text == f"Enter passphrase for key '{pw_net.locked_key}': "


def test_a_wrong_passphrase_is_refused(pw_net: Sandbox) -> None:
    with pytest.raises(AnswerRefused) as caught:
        _connect(_chain(pw_net, "unicorn-locked"), lambda q: "wrong")
    assert caught.value.hop == "unicorn-locked"
    assert str(pw_net.locked_key) in str(caught.value) and "wrong" in str(caught.value)


def test_without_ask_a_locked_key_is_answer_needed(pw_net: Sandbox) -> None:
    with pytest.raises(AnswerNeeded) as caught:
        _connect(_chain(pw_net, "unicorn-locked"), None)
    assert caught.value.hop == "unicorn-locked"
    assert f"the key {pw_net.locked_key} needs its passphrase" in str(caught.value)


# the CLI: on a terminal it asks, without one it says how -----------------------------
def _read_until(fd: int, words: list[str], timeout: float) -> str:
    """Read the pty until one of ``words`` shows (or it closes, or the time is up)."""
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not any(w.encode() in out for w in words):
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


@pytest.mark.parametrize("backend", ["sshtunnel", "openssh"])
def test_cli_on_a_terminal_asks_for_the_code(
        totp_net: Sandbox, runtime_dir: Path, backend: str) -> None:
    argv = [sys.executable, "-m", "jupyter_tunnel", "open", "beast", "--via", "unicorn",
            "--backend", backend, "--no-resume", "--ssh-config", str(totp_net.ssh_config)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session with the pty as its terminal
        os.execv(sys.executable, argv)
    code = ""
    try:
        before = _read_until(fd, ["asks:", "error"], 60)
        assert "unicorn (" in before and "asks: One-time password (OATH) for `root':" \
            in before, before
        code = totp_net.next_code()
        os.write(fd, code.encode() + b"\n")
        after = _read_until(fd, ["http://127.0.0.1:", "error"], 60)
        assert "http://127.0.0.1:" in after, after
        assert code not in before + after  # not echoed
        assert code not in _registry_text(runtime_dir)
        assert _secret_in_processes(code) == []
        os.kill(pid, signal.SIGINT)
        _read_until(fd, ["closed"], 30)
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    assert_left_nothing(runtime_dir)


def test_cli_without_a_terminal_is_an_auth_error(
        totp_net: Sandbox, runtime_dir: Path) -> None:
    cli = CLI(totp_net.ssh_config)
    result = cli.run("open", "beast", "--via", "unicorn", "--backend", "sshtunnel",
                     "--no-resume", "--json")
    assert result.returncode == 1, result.stdout
    answer = json.loads(result.stdout)
    assert answer["kind"] == "auth" and answer["hop"] == "unicorn"
    assert "accepted the key" in answer["error"] and "one-time code" in answer["error"]
    plain = cli.run("open", "beast", "--via", "unicorn", "--backend", "sshtunnel",
                    "--no-resume")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "unicorn (" in plain.stderr, plain.stderr
    assert "open the tunnel in the foreground from a terminal" in plain.stderr, plain.stderr
    # --detach: the question waits for `jupyter tunnel answer` (test_login_answer.py) until
    # the answer timeout
    detached = cli.run("open", "beast", "--via", "unicorn", "--backend", "sshtunnel",
                       "--no-resume", "--detach", "--TunnelManager.answer_timeout=2")
    assert detached.returncode == 1 and "Traceback" not in detached.stderr
    assert "answer it with: jupyter tunnel answer beast" in detached.stderr, detached.stderr
    assert "within 2 s" in detached.stderr, detached.stderr
    assert_left_nothing(runtime_dir)
