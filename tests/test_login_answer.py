"""Answers from another process: ``jupyter tunnel open --detach`` asks on the terminal that
started it before it detaches; without a terminal it says to use ``jupyter tunnel answer
NAME``, which takes the answer on stdin (or its terminal) and hands it to the background
process through its door (a 0600 socket of the user).  Stale, foreign and missing answers
are refused with words that say why."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import stat
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import CLI
from test_faults import assert_left_nothing
from test_login_sshtunnel import _read_until, _registry_text, _secret_in_processes
from test_open import api_status

from jupyter_tunnel.errors import AnswerTimeout, NoQuestionWaiting, TunnelError
from jupyter_tunnel.login.door import Door, knock
from jupyter_tunnel.login.mailbox import Mailbox
from jupyter_tunnel.login.questions import Question
from jupyter_tunnel.login.waiting import Waiter
from jupyter_tunnel.sandbox import Sandbox

# --- the door, without a network ----------------------------------------------------------

def _asking(mailbox: Mailbox, question: Question) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []

    def run() -> None:
        try:
            got.append(mailbox(question))
        except TunnelError as exc:
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_the_door_takes_the_answer_to_the_waiting_question_only(tmp_path: Path) -> None:
    path = tmp_path / "door.sock"
    mailbox = Mailbox(limit=30, door=lambda: path)
    question = Question(hop="unicorn", label="unicorn (10.0.0.2)", text="Code: ")
    with pytest.raises(NoQuestionWaiting, match="no process takes answers"):
        knock(path, question.id, "123456", "beast", wait=0.3)  # nothing asked yet: closed
    thread, got = _asking(mailbox, question)
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, "the door never opened"
        time.sleep(0.02)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(NoQuestionWaiting, match="no longer waits"):
        knock(path, "0123456789abcdef", "123456", "beast")
    with pytest.raises(TunnelError, match="one line"):
        knock(path, question.id, "12\n34", "beast")
    assert thread.is_alive()  # still waiting: nothing was taken
    knock(path, question.id, "123456", "beast")
    thread.join(5)
    assert got == ["123456"]
    assert not path.exists()  # closed once no question waits


def test_a_question_given_up_closes_its_door_before_the_error(tmp_path: Path) -> None:
    # the process may exit right after the error: its socket must already be gone
    folder = tmp_path / "jupyter_tunnel-test"
    path = folder / "door.sock"
    mailbox = Mailbox(limit=60, door=lambda: path)
    question = Question(hop="unicorn", label="unicorn (10.0.0.2)", text="Code: ")
    with pytest.raises(AnswerTimeout, match=r"within 0\.5 s"):
        Waiter(mailbox, 0.5, lambda _q: None)(question)
    assert not path.exists() and not folder.exists()
    with pytest.raises(NoQuestionWaiting, match="no longer waits"):
        mailbox.answer(question.id, "123456")


def test_another_user_cannot_answer(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    path = tmp_path / "door.sock"
    os.chmod(tmp_path, 0o755)  # only the socket's own mode keeps the other user out
    door = Door(path, lambda question_id, answer: None)
    try:
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                knock(path, "0123456789abcdef", "123456", "beast", wait=0)
            except TunnelError as exc:
                code = 0 if "cannot reach" in str(exc) or "refused" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        door.close()


def test_the_terminal_hides_a_secret_before_it_shows_the_question(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # an answer typed (or pasted) the moment the prompt shows must be neither echoed nor
    # dropped: the echo goes off before the prompt is written (as ssh's readpassphrase)
    from jupyter_tunnel.login import terminal

    master, slave = pty.openpty()
    monkeypatch.setattr(terminal, "TTY", os.ttyname(slave))
    echo_at_prompt: list[bool] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if b"asks:" in data:
            echo_at_prompt.append(bool(termios.tcgetattr(fd)[3] & termios.ECHO))
            real_write(master, b"123456\n")  # typed at once
        return real_write(fd, data)

    monkeypatch.setattr(terminal.os, "write", write)
    try:
        question = Question(hop="unicorn", label="unicorn (10.0.0.2)", text="Code: ")
        assert terminal.TerminalAsk(10)(question) == "123456"
        assert echo_at_prompt == [False]
        shown = os.read(master, 4096)
        assert b"asks: Code:" in shown and b"123456" not in shown
    finally:
        os.close(master)
        os.close(slave)


def test_answer_says_why_it_cannot(totp_net: Sandbox) -> None:
    cli = CLI(totp_net.ssh_config)
    missing = cli.run("answer", "nosuch")
    assert missing.returncode == 1 and "no tunnel named 'nosuch'" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = cli.run("answer", "a;b")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


# --- the CLI ------------------------------------------------------------------------------

def _open_detached_without_terminal(net: Sandbox, backend: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        CLI(net.ssh_config).argv("open", "beast", "--via", "unicorn", "--backend", backend,
                                 "--detach", "--json"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until_prompt(cli: CLI, name: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cli.run("status", name, "--json")
        if result.returncode == 0:
            record = json.loads(result.stdout)
            if record.get("prompt"):
                return dict(record["prompt"])
        time.sleep(0.2)
    pytest.fail(f"tunnel {name} showed no question within {timeout} s")


@pytest.mark.parametrize("backend", ["sshtunnel", "openssh"])
def test_detach_without_a_terminal_is_answered_with_jupyter_tunnel_answer(
        totp_net: Sandbox, runtime_dir: Path, backend: str) -> None:
    cli = CLI(totp_net.ssh_config)
    opener = _open_detached_without_terminal(totp_net, backend)
    code = ""
    try:
        prompt = _until_prompt(cli, "beast")
        assert prompt["hop"] == "unicorn" and prompt["echo"] is False, prompt
        code = totp_net.next_code()
        answered = subprocess.run(cli.argv("answer", "beast"), input=code + "\n",
                                  capture_output=True, text=True, timeout=60)
        assert answered.returncode == 0, answered.stderr
        assert "unicorn (" in answered.stderr and "One-time password" in answered.stderr
        assert "Answered unicorn (" in answered.stderr, answered.stderr
        out, err = opener.communicate(timeout=90)
        info = json.loads(out)
        assert info["state"] == "ready", info
        assert "answer it with: jupyter tunnel answer beast" in err, err
        assert api_status(str(info["url"])) == 200
        again = subprocess.run(cli.argv("answer", "beast"), input="123456\n",
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "waits for no answer" in again.stderr, again.stderr
        assert code not in _registry_text(runtime_dir)
        assert _secret_in_processes(code) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            opener.kill()
        opener.wait()
        cli.run("close", "--all")
    assert_left_nothing(runtime_dir)


def test_detach_on_a_terminal_asks_before_it_detaches(
        totp_net: Sandbox, runtime_dir: Path) -> None:
    argv = [sys.executable, "-m", "jupyter_tunnel", "open", "beast", "--via", "unicorn",
            "--backend", "sshtunnel", "--detach", "--ssh-config", str(totp_net.ssh_config)]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, argv)
    cli = CLI(totp_net.ssh_config)
    try:
        before = _read_until(fd, ["asks:", "error"], 60)
        assert "unicorn (" in before and "asks: One-time password (OATH) for `root':" \
            in before, before
        code = totp_net.next_code()
        os.write(fd, code.encode() + b"\n")
        after = _read_until(fd, ["ready in the background", "error"], 60)
        assert "Tunnel beast ready in the background" in after, after
        assert code not in before + after  # not echoed
        _, status = os.waitpid(pid, 0)  # the terminal's process is done; the tunnel stays
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
        record = json.loads(cli.run("status", "beast", "--json").stdout)
        assert record["state"] == "ready" and record["prompt"] is None, record
        assert api_status(str(record["url"])) == 200
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
        cli.run("close", "--all")
    assert_left_nothing(runtime_dir)


def test_cleanup_removes_the_doors_of_killed_processes(tmp_path: Path) -> None:
    from jupyter_tunnel.login.door import door_path
    from jupyter_tunnel.manager import TunnelManager

    manager = TunnelManager(registry_dir=str(tmp_path / "registry"))
    stale, live = (door_path(manager.registry.path, n) for n in ("killed", "asking"))
    stale.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))  # its process was killed: the file stays, nothing listens
    dead.close()
    door = Door(live, lambda question_id, answer: None)
    try:
        manager.cleanup()
        assert not stale.exists() and live.exists()  # a door still open is left alone
    finally:
        door.close()
    assert not live.parent.exists()  # the last door took the folder with it
    manager.cleanup()  # nothing to do: no error
