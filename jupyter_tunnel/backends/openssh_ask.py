"""Questions of an ssh login, asked through ``SSH_ASKPASS`` (OpenSSH 8.4 or later).

When the tunnel can ask (``connect(ask=…)``), the master and every jump helper of its
``-J`` chain (an ``ssh -W`` of its own, which reads ``BatchMode`` from the config ``-F``
names, see :meth:`.openssh_files.MasterFiles.write_config`) run with ``BatchMode no``,
``SSH_ASKPASS_REQUIRE=force`` and ``SSH_ASKPASS`` naming a small script of ours
(``KEY.askpass``, 0700 in the 0700 control folder), which runs :mod:`jupyter_tunnel.login.
askpass`.  That program hands the prompt to this process over ``KEY.ask`` (a 0600 socket
in the same folder, named by ``JT_ASK_SOCKET``; see :mod:`jupyter_tunnel.login.askserver`)
and gives ssh the answer through its standard output.  Both files go when the login ends.

Which hop asks: the askpass program's parent is the ssh that asks, the master (the last
hop) or the jump helper of one jump hop; the last word of its command line is that hop's
alias (the master's and the helpers' command lines are ssh's own, see
:func:`.openssh_master.destination`).  Failing that, the host in ssh's prompt, then the
first hop not logged in yet.

Kinds, from ssh's own prompts: ``Enter passphrase for key '…':`` is a key's passphrase,
``user@host's password:`` a password, anything else keyboard-interactive (ssh shows
those as ``(user@host) PROMPT``: the hop is named apart, the text is the server's).

Echo: ssh tells its askpass program nothing of the echo flag a keyboard-interactive
prompt carries (``SSH_ASKPASS_PROMPT`` is only set for yes/no confirmations and notices),
so every question of this backend is asked as a secret (echo off).  A yes/no confirmation
(``SSH_ASKPASS_PROMPT=confirm``, e.g. an unknown host key, which our
``StrictHostKeyChecking`` never lets ssh ask) is refused without asking anyone.

Older OpenSSH (before 8.4) ignores ``SSH_ASKPASS_REQUIRE`` and, with no terminal and no
``DISPLAY``, cannot ask: the login fails as without ``ask`` (:class:`AnswerNeeded`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from ..login.askpass import SOCKET_ENV
from ..login.askserver import Request
from ..login.questions import Question
from ..sshconfig import ResolvedHop
from .openssh_errors import find_hop

_PASSPHRASE = re.compile(r"^Enter passphrase for key '(.+)':\s*$", re.DOTALL)
_PASSWORD = re.compile(r"^(?:\S+@)?(\S+?)'s password:\s*$")
_KBDINT = re.compile(r"^\((?:[^@()\s]+@)?([^()\s]+)\) (.*)$", re.DOTALL)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def write_script(path: Path) -> None:
    """The askpass program ssh runs (0700): this Python, isolated (``-I``), with this
    package first on its path, running :func:`jupyter_tunnel.login.askpass.main`."""
    code = (f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); "
            "from jupyter_tunnel.login.askpass import main; sys.exit(main())")
    text = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -c {shlex.quote(code)} "$@"\n'
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def env(script: Path, socket_path: Path) -> dict[str, str]:
    """What the environment of an ssh that may ask holds besides the usual."""
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force",
            SOCKET_ENV: str(socket_path)}


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def hop_of_process(chain: list[ResolvedHop], pid: int | None) -> ResolvedHop | None:
    """The hop an ssh process of ours logs in to: the last word of its command line (the
    master's target after ``--``, a jump helper's jump host)."""
    if pid is None:
        return None
    argv = _cmdline(pid)
    if len(argv) < 2 or os.path.basename(argv[0]) != "ssh":
        return None
    alias = argv[-1].rsplit("@", 1)[-1]
    return next((hop for hop in chain if hop.alias == alias), None)


class LoginQuestions:
    """Turns the requests of one login's askpass programs into Questions naming the hop."""

    def __init__(self, chain: list[ResolvedHop], failing: Callable[[], ResolvedHop]) -> None:
        self.chain = chain
        #: the hop being logged in to, when nothing else tells
        self.failing = failing

    def question(self, request: Request) -> Question | None:
        """The Question for ``request``; None for a yes/no confirmation."""
        if request.hint == "confirm":
            return None
        prompt = request.prompt
        hop = hop_of_process(self.chain, request.ppid)
        kind, text, named = "keyboard-interactive", prompt, None
        if _PASSPHRASE.match(prompt):
            kind = "passphrase"
        elif match := _PASSWORD.match(prompt):
            kind, named = "password", match.group(1)
        elif match := _KBDINT.match(prompt):
            named, text = match.group(1), match.group(2)
        if hop is None and named is not None:
            hop = find_hop(self.chain, named)
        hop = hop or self.failing()
        return Question(hop=hop.alias, label=hop.label, text=text, echo=False, kind=kind)
