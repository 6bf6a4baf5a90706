"""Logins that ask, with the OpenSSH backend: ssh's questions (a key's passphrase, a
one-time code) reach the tunnel's ``ask`` through our SSH_ASKPASS program, naming the hop;
a wrong answer is refused cleanly; no answer lands in a log, argv or environment."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import need
from test_faults import assert_left_nothing, processes_of

from jupyter_tunnel.backends import openssh_ask
from jupyter_tunnel.backends import openssh_files as of
from jupyter_tunnel.backends.openssh_ask import LoginQuestions, write_script
from jupyter_tunnel.backends.openssh_backend import OpenSSHBackend
from jupyter_tunnel.backends.openssh_errors import key_is_locked
from jupyter_tunnel.errors import AnswerNeeded, AnswerRefused, AnswerTimeout, TunnelError
from jupyter_tunnel.login import askpass
from jupyter_tunnel.login.askserver import AskServer, Request
from jupyter_tunnel.login.questions import Ask, Question
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import Hop
from jupyter_tunnel.sshconfig import ResolvedHop, SSHConfig, resolve_chain

E = TypeVar("E", bound=TunnelError)
PASSPHRASE = "correct horse 7 battery"  # a test key's


# the askpass pair, no network -------------------------------------------------------
def _hop(alias: str, address: str) -> ResolvedHop:
    return ResolvedHop(alias, address, 22, "alice")


def _run_askpass(script: Path, sock: Path, prompt: str, hint: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_ASKPASS_PROMPT"}
    env[askpass.SOCKET_ENV] = str(sock)
    if hint is not None:
        env["SSH_ASKPASS_PROMPT"] = hint
    return subprocess.run([str(script), prompt], capture_output=True, text=True, env=env,
                          timeout=30, check=False)


def test_askpass_program_and_server(tmp_path: Path) -> None:
    folder = of.secure_dir(tmp_path / "ctl")
    chain = [_hop("unicorn", "10.0.0.2"), _hop("beast", "10.0.0.6")]
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        return "123456"

    script, sock = folder / "k.askpass", folder / "k.ask"
    write_script(script)
    server = AskServer(sock, ask, LoginQuestions(chain, lambda: chain[0]).question)
    try:
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        result = _run_askpass(script, sock, "(alice@10.0.0.6) One-time password (OATH) "
                              "for `alice': ")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "123456\n"
        q = asked[-1]
        # named by the prompt's host here (the askpass program's parent is no ssh of ours)
        assert (q.hop, q.kind, q.echo) == ("beast", "keyboard-interactive", False)
        assert q.text == "One-time password (OATH) for `alice': "
        assert q.display.startswith("beast (10.0.0.6:22) asks: One-time password")
        assert _run_askpass(script, sock, "alice@10.0.0.2's password: ").returncode == 0
        assert (asked[-1].hop, asked[-1].kind) == ("unicorn", "password")
        assert _run_askpass(script, sock, "Enter passphrase for key '/k/id': ").returncode == 0
        assert (asked[-1].hop, asked[-1].kind) == ("unicorn", "passphrase")  # the failing
        # a yes/no confirmation is refused without asking; a notice needs no answer
        before = len(asked)
        refused = _run_askpass(script, sock, "Are you sure (yes/no)?", hint="confirm")
        assert refused.returncode == 1 and refused.stdout == ""
        assert _run_askpass(script, sock, "Touch your key", hint="none").returncode == 0
        assert len(asked) == before
        assert [q.hop for q in server.answered] == ["beast", "unicorn", "unicorn"]
    finally:
        server.close()
    assert not sock.exists()
    # no server: the program says so and exits 1 (ssh: cancelled)
    gone = _run_askpass(script, sock, "Password: ")
    assert gone.returncode == 1 and gone.stdout == ""


def test_an_ask_that_fails_ends_the_login_first(tmp_path: Path) -> None:
    folder = of.secure_dir(tmp_path / "ctl")
    chain = [_hop("unicorn", "10.0.0.2")]
    events: list[str] = []

    def ask(question: Question) -> str:
        raise AnswerTimeout(f"{question.label} asked, no answer came", hop=question.hop)

    script, sock = folder / "k.askpass", folder / "k.ask"
    write_script(script)
    server = AskServer(sock, ask, LoginQuestions(chain, lambda: chain[0]).question,
                       on_error=lambda exc: events.append(type(exc).__name__))
    try:
        result = _run_askpass(script, sock, "(alice@10.0.0.2) Verification code: ")
        assert result.returncode == 1 and result.stdout == ""
        assert events == ["AnswerTimeout"]  # before the program was told
        assert isinstance(server.error, AnswerTimeout) and server.answered == []
        assert "no answer came" in result.stderr
    finally:
        server.close()


def test_the_server_names_the_hop_by_the_asking_ssh(tmp_path: Path) -> None:
    """The askpass program's parent is the ssh that asks: its last word names the hop."""
    chain = [_hop("unicorn", "10.0.0.2"), _hop("beast", "10.0.0.6")]
    questions = LoginQuestions(chain, lambda: chain[-1])
    # a stand-in "ssh" whose last argument is the jump host, as ssh's -W helper is run
    proc = subprocess.Popen(["ssh", "-c", "import time; time.sleep(30)", "-l", "alice",
                             "-W", "[10.0.0.6]:22", "unicorn"], executable=sys.executable)
    try:
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # just exec'd
            time.sleep(0.01)
        q = questions.question(Request("(alice@10.0.0.6) Code: ", "", None, proc.pid))
        assert q is not None and q.hop == "unicorn"
    finally:
        proc.kill()
        proc.wait()


def test_locked_keys_are_told_from_open_ones(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        need("ssh-keygen (apt-get install -y openssh-client)")
    for name, phrase in (("open", ""), ("locked", PASSPHRASE)):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", phrase, "-f",
                        str(tmp_path / name)], check=True, capture_output=True)
    assert key_is_locked(str(tmp_path / "locked"))
    assert not key_is_locked(str(tmp_path / "open"))
    assert not key_is_locked(str(tmp_path / "missing"))
    assert not key_is_locked(str(tmp_path / "open.pub"))


# against real sshd -------------------------------------------------------------------
@pytest.fixture
def ssh_client() -> None:
    if shutil.which("ssh") is None:
        need("the OpenSSH client (apt-get install -y openssh-client)")


@pytest.fixture
def locked_key_config(net: Sandbox, tmp_path: Path) -> Path:
    """The sandbox's ssh config with its key behind a passphrase (the same key, so every
    host takes it; no agent: conftest removes SSH_AUTH_SOCK)."""
    key = tmp_path / "id_locked"
    shutil.copy(net.key, key)
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", PASSPHRASE, "-f", str(key)],
                   check=True, capture_output=True)
    config = tmp_path / "ssh_config"
    config.write_text(net.ssh_config.read_text().replace(f"IdentityFile {net.key}\n",
                                                         f"IdentityFile {key}\n"))
    return config


def _chain(config: Path) -> list[ResolvedHop]:
    return resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(config))


def _fails(chain: list[ResolvedHop], runtime_dir: Path, error: type[E],
           ask: Ask | None = None) -> E:
    """Connect, expecting ``error``; then nothing may be left: no ssh process, registry
    entry, socket or file of ours."""
    backend = OpenSSHBackend()
    try:
        with pytest.raises(error) as caught:
            backend.connect(chain, ask=ask, timeout=10)
    finally:
        backend.close()
    assert_left_nothing(runtime_dir)
    assert not of.control_dir(create=False).exists()
    return caught.value


def _second_tunnel_asks_nothing(chain: list[ResolvedHop], ask: Ask, asked: list[Question]
                                ) -> None:
    """Another tunnel to the same hosts uses the live master: no login, nothing asked."""
    before = len(asked)
    again = OpenSSHBackend()
    try:
        again.connect(chain, ask=ask, timeout=10)
        assert len(asked) == before
        assert again.run("echo again")[1].strip() == "again"
    finally:
        again.close()


def _ssh_processes(runtime_dir: Path) -> list[int]:
    return [pid for pid in processes_of(runtime_dir)
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh"]


def _assert_secret_nowhere(secret: str, pids: list[int], files: list[Path]) -> None:
    needle = secret.encode()
    for pid in pids:
        for what in ("environ", "cmdline"):
            with open(f"/proc/{pid}/{what}", "rb") as fh:
                assert needle not in fh.read(), f"the answer is in {what} of {pid}"
    for path in files:
        if path.exists():
            assert needle not in path.read_bytes(), f"the answer is in {path}"


@pytest.mark.network
def test_passphrase_of_each_hop_is_asked_through_askpass(
        net: Sandbox, runtime_dir: Path, locked_key_config: Path, ssh_client: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    chain = _chain(locked_key_config)
    asked: list[Question] = []
    # the hop is told by the ssh that asks (its prompt names no host): record what the
    # askpass program's parent said
    by_process: list[str | None] = []
    real = openssh_ask.hop_of_process

    def recording(chain: list[ResolvedHop], pid: int | None) -> ResolvedHop | None:
        hop = real(chain, pid)
        by_process.append(hop.alias if hop else None)
        return hop

    monkeypatch.setattr(openssh_ask, "hop_of_process", recording)
    seen: dict[str, object] = {}

    def ask(question: Question) -> str:
        asked.append(question)
        folder = of.control_dir()
        seen["modes"] = {p.name.split(".")[-1]: stat.S_IMODE(p.stat().st_mode)
                         for p in folder.iterdir() if p.suffix in (".ask", ".askpass")}
        seen["folder"] = stat.S_IMODE(folder.stat().st_mode)
        return PASSPHRASE

    backend = OpenSSHBackend()
    try:
        backend.connect(chain, ask=ask, timeout=10)
        assert [(q.hop, q.kind, q.echo) for q in asked] == [
            ("unicorn", "passphrase", False), ("beast", "passphrase", False)]
        assert by_process == ["unicorn", "beast"]  # the jump helper, then the master
        assert asked[0].label.startswith("unicorn (") and "id_locked" in asked[0].text
        assert seen == {"modes": {"ask": 0o600, "askpass": 0o700}, "folder": 0o700}
        code, out, _ = backend.run("echo logged-in")
        assert (code, out.strip()) == (0, "logged-in")
        folder = of.control_dir()
        # the askpass files went with the login; the answer is in no log, argv, environ
        assert not list(folder.glob("*.ask")) and not list(folder.glob("*.askpass"))
        pids = _ssh_processes(runtime_dir)
        assert pids  # the master and the jump helper
        _assert_secret_nowhere(PASSPHRASE, pids, list(folder.glob("*.log*")))
        # a second tunnel to the same hosts uses the master: nothing is asked
        _second_tunnel_asks_nothing(chain, ask, asked)
    finally:
        backend.close()
    assert_left_nothing(runtime_dir)
    assert not of.control_dir(create=False).exists()


@pytest.mark.network
def test_a_wrong_passphrase_is_refused_naming_the_hop(
        net: Sandbox, runtime_dir: Path, locked_key_config: Path, ssh_client: None) -> None:
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        return "not the passphrase"

    error = _fails(_chain(locked_key_config), runtime_dir, AnswerRefused, ask)
    assert error.hop == "unicorn"
    assert "passphrase" in str(error) and "unicorn (" in str(error)
    assert [q.hop for q in asked] == ["unicorn"]  # asked once: NumberOfPasswordPrompts


@pytest.mark.network
def test_an_unanswered_question_ends_the_login_with_the_asks_error(
        net: Sandbox, runtime_dir: Path, locked_key_config: Path, ssh_client: None) -> None:
    def ask(question: Question) -> str:
        raise AnswerTimeout(f"{question.label} asked and no answer came", hop=question.hop)

    error = _fails(_chain(locked_key_config), runtime_dir, AnswerTimeout, ask)
    assert error.hop == "unicorn"


@pytest.mark.network
def test_without_ask_a_locked_key_fails_without_asking(
        net: Sandbox, runtime_dir: Path, locked_key_config: Path, ssh_client: None) -> None:
    error = _fails(_chain(locked_key_config), runtime_dir, AnswerNeeded)
    assert error.hop == "unicorn"
    assert "id_locked needs its passphrase" in str(error)


# a jump host that wants a one-time code after the key (the sandbox's TOTP option) -----
def _http_status(port: int, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=20) as reply:
        return int(reply.status)


@pytest.mark.network
def test_totp_code_is_asked_naming_the_jump_host(
        totp_net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    net = totp_net
    assert net.jupyter is not None
    chain = _chain(net.ssh_config)
    asked: list[Question] = []
    codes: list[str] = []

    def ask(question: Question) -> str:
        asked.append(question)
        codes.append(net.next_code())  # type: ignore[attr-defined]
        return codes[-1]

    backend = OpenSSHBackend()
    try:
        backend.connect(chain, ask=ask, timeout=10)
        assert [(q.hop, q.kind, q.echo) for q in asked] == [
            ("unicorn", "keyboard-interactive", False)]
        assert "One-time password" in asked[0].text
        assert asked[0].display.startswith(f"{chain[0].label} asks: One-time password")
        port = backend.forward_local(0, "127.0.0.1", net.jupyter.port)
        assert _http_status(port, net.jupyter.token) == 200
        folder = of.control_dir()
        _assert_secret_nowhere(codes[0], _ssh_processes(runtime_dir),
                               list(folder.glob("*.log*")))
        # a second tunnel to the same hosts: the master is shared, nothing is asked
        _second_tunnel_asks_nothing(chain, ask, asked)
    finally:
        backend.close()
    assert_left_nothing(runtime_dir, port)
    assert not of.control_dir(create=False).exists()
    for host in ("unicorn", "beast"):  # and not in the servers' logs either
        log = net.dir / host / "sshd.log"
        assert not log.exists() or codes[0] not in log.read_text(errors="replace")


@pytest.mark.network
def test_a_wrong_code_is_refused_naming_the_jump_host(
        totp_net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    asked: list[Question] = []

    def ask(question: Question) -> str:
        asked.append(question)
        return "000000" if totp_net.next_code() != "000000" else "111111"  # type: ignore[attr-defined]

    error = _fails(_chain(totp_net.ssh_config), runtime_dir, AnswerRefused, ask)
    assert error.hop == "unicorn"
    assert "unicorn (" in str(error) and "refused the answer" in str(error)
    assert len(asked) == 1  # one try: the PAM counters count every one


@pytest.mark.network
def test_without_ask_a_code_is_answer_needed_naming_the_jump_host(
        totp_net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    error = _fails(_chain(totp_net.ssh_config), runtime_dir, AnswerNeeded)
    assert error.hop == "unicorn"
    assert "accepted the key" in str(error)
    assert "one-time code" in str(error)
