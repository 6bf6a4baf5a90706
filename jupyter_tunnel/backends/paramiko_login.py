"""Logging in to one hop with paramiko: keys, then what the server still asks for.

The order is OpenSSH's: the ``none`` method tells which methods the server takes; keys
(agent, then key files, then passphrase-locked key files, whose passphrase is asked only
when it gets to them); then keyboard-interactive (a TOTP code after the key, a Duo
prompt...), then password.  Every question goes to ``ask`` as a
:class:`~jupyter_tunnel.login.questions.Question` naming the hop, and each is asked ONCE: a
refused answer ends the login (sshd's MaxAuthTries and PAM count every try).  Without
``ask``, a question ends the login with :class:`AnswerNeeded` saying which hop asks what.
Answers are passed on to paramiko and forgotten: never logged or kept.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from typing import Any

import paramiko

from ..errors import AnswerNeeded, AnswerRefused, AuthError, HopUnreachable, TunnelError
from ..login.questions import HOW_TO_ANSWER, Ask, Question
from ..sshconfig import ResolvedHop

_CODE = re.compile(r"one[- ]time|otp|verification|passcode|token|code|duo|factor", re.I)


class _NoAsk(Exception):
    """Raised in paramiko's thread by the interactive handler when no one can be asked."""

    def __init__(self, question: Question) -> None:
        super().__init__(question.text)
        self.question = question


def load_identities(hop: ResolvedHop, agent: Any
                    ) -> tuple[list[tuple[str, Any]], list[str], list[str]]:
    """Keys to offer, as (description, PKey); notes on keys skipped; and the key files
    that need a passphrase (offered last, if the others do not do)."""
    offered: list[tuple[str, Any]] = []
    notes: list[str] = []
    locked: list[str] = []
    file_blobs: set[bytes] = set()
    file_keys: list[tuple[str, Any]] = []
    for path in hop.identity_files:
        if not os.path.exists(path):
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except Exception as exc:
            if not _needs_passphrase(exc):
                notes.append(f"{path} cannot be used ({type(exc).__name__}: "
                             f"{exc or 'unsupported'})")
                continue
            locked.append(path)
            pub = path + ".pub"
            if os.path.exists(pub):
                with contextlib.suppress(Exception):
                    file_blobs.add(paramiko.PublicBlob.from_file(pub).key_blob)
            continue
        file_blobs.add(key.asbytes())
        file_keys.append((path, key))
    agent_keys: list[Any] = list(agent.get_keys()) if agent is not None else []
    for key in agent_keys:
        if hop.identities_only and key.asbytes() not in file_blobs:
            continue
        offered.append((f"agent key {key.fingerprint}", key))
    agent_blobs = {k.asbytes() for k in agent_keys}
    offered.extend(item for item in file_keys if item[1].asbytes() not in agent_blobs)
    # a locked file whose key the agent holds was offered through the agent already
    locked = [p for p in locked if not _pub_blob(p) or _pub_blob(p) not in agent_blobs]
    return offered, notes, locked


def _what(question: Question) -> str:
    """What a question asks for, in a message: a one-time code, a password, an answer."""
    if _CODE.search(question.text):
        return "a one-time code"
    if question.kind == "password" or re.search("password", question.text, re.I):
        return "a password"
    return "an answer"


def _needs_passphrase(exc: Exception) -> bool:
    """Whether loading a key failed for want of its passphrase: paramiko says so, or
    (for new-format OpenSSH keys) cryptography raises a TypeError that says it."""
    return isinstance(exc, paramiko.PasswordRequiredException) or (
        isinstance(exc, TypeError) and "password" in str(exc).lower())


def _pub_blob(path: str) -> bytes | None:
    with contextlib.suppress(Exception):
        return bytes(paramiko.PublicBlob.from_file(path + ".pub").key_blob)
    return None


class Login:
    """One login to ``hop`` over ``transport`` (see the module docstring)."""

    def __init__(self, hop: ResolvedHop, transport: paramiko.Transport,
                 ask: Ask | None) -> None:
        self.hop, self.transport, self.ask = hop, transport, ask
        self.tried: list[str] = []
        self.notes: list[str] = []
        #: the key the server accepted when it wants more (partial success)
        self.accepted: str | None = None
        #: the methods the server still wants after the key it accepted
        self._after_key: list[str] = []
        #: passphrase-locked key files not tried, no one being there to ask
        self._locked_unasked: list[str] = []

    # the steps ------------------------------------------------------------------
    def run(self, agent: Any) -> None:
        """Log in or raise an :class:`AuthError` (or :class:`HopUnreachable`)."""
        hop, transport = self.hop, self.transport
        allowed = self._step(lambda: transport.auth_none(hop.user))
        if transport.is_authenticated():
            return
        if "publickey" in allowed:
            allowed = self._keys(agent, allowed)
            if transport.is_authenticated():
                return
        if "keyboard-interactive" in allowed:
            self._interactive()
        elif "password" in allowed:
            self._password()
        if transport.is_authenticated():
            return
        raise self._refused(allowed)

    def _step(self, attempt: Callable[[], Any]) -> list[str]:
        """Run one auth call; the methods the server still allows ([] when it failed)."""
        try:
            result = attempt()
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        except paramiko.AuthenticationException:
            self._check_alive()
            return []
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._check_alive(f": {exc}")
            raise AuthError(f"{self.hop.label} refused the login of {self.hop.user}: {exc}",
                            hop=self.hop.alias) from None
        return list(result or [])

    def _check_alive(self, detail: str = "") -> None:
        if not self.transport.is_active():
            raise HopUnreachable(f"lost the connection to {self.hop.label} while logging in"
                                 f"{detail}", hop=self.hop.alias) from None

    def _keys(self, agent: Any, allowed: list[str]) -> list[str]:
        """Offer each key until one is accepted; the methods still allowed after it."""
        hop, transport = self.hop, self.transport
        keys, notes, locked = load_identities(hop, agent)
        self.notes += notes
        for desc, key in keys:
            if self._offer(desc, key, allowed) is not None:
                return self._after_key
        for path in locked:
            key = self._unlock(path)
            if key is not None and self._offer(path, key, allowed) is not None:
                return self._after_key
        if not transport.is_authenticated() and locked and self.ask is None:
            self._locked_unasked = locked
        return allowed

    def _offer(self, desc: str, key: Any, allowed: list[str]) -> list[str] | None:
        """Offer one key: the methods still wanted once accepted ([] when that was all),
        or None when refused."""
        self.tried.append(desc)
        try:
            rest = self.transport.auth_publickey(self.hop.user, key)
        except paramiko.BadAuthenticationType as exc:
            self._after_key = list(exc.allowed_types)  # keys are not taken at all
            return self._after_key
        except paramiko.AuthenticationException:
            self._check_alive()
            return None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._check_alive(f": {exc}")
            raise AuthError(f"{self.hop.label} refused the login of {self.hop.user} with "
                            f"{desc}: {exc}", hop=self.hop.alias) from None
        self._after_key = list(rest or [])
        if not self.transport.is_authenticated():
            self.accepted = desc
        return self._after_key

    def _unlock(self, path: str) -> Any:
        """The key of a passphrase-locked file, its passphrase asked (None: no one to ask)."""
        if self.ask is None:
            return None
        hop = self.hop
        question = Question(hop.alias, hop.label, f"Enter passphrase for key '{path}': ",
                            echo=False, kind="passphrase")
        answer = self.ask(question)
        try:
            return paramiko.PKey.from_path(path, password=answer.encode())
        except (paramiko.SSHException, ValueError):
            raise AnswerRefused(f"the passphrase given for the key {path} (to log in to "
                                f"{hop.label}) is wrong: try again", hop=hop.alias) from None
        finally:
            del answer

    def _interactive(self) -> None:
        """keyboard-interactive: every prompt of every round becomes a question."""
        hop, asked = self.hop, []

        def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]
                    ) -> list[str]:
            info = "\n".join(t for t in (title.strip(), instructions.strip()) if t)
            answers = []
            for text, echo in prompts:
                question = Question(hop.alias, hop.label, text, echo=bool(echo),
                                    kind="keyboard-interactive", instructions=info)
                if self.ask is None:
                    raise _NoAsk(question)
                asked.append(question)
                answers.append(self.ask(question))
            return answers

        # the handler runs in paramiko's thread and waits for a person: no auth timeout of
        # paramiko's own (the ask has the tunnel's; the server's LoginGraceTime still holds)
        limit, self.transport.auth_timeout = self.transport.auth_timeout, None
        try:
            self.transport.auth_interactive(hop.user, handler)
        except _NoAsk as exc:
            raise self._needed(exc.question) from None
        except TunnelError:
            raise  # the ask callback's own (AnswerTimeout, AnswerNeeded...)
        except paramiko.BadAuthenticationType:
            return
        except paramiko.AuthenticationException:
            self._check_alive()
            if asked:
                raise self._answer_refused(asked[-1]) from None
            return
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._check_alive(f": {exc}")
            raise AuthError(f"{hop.label} failed the keyboard-interactive login of "
                            f"{hop.user}: {exc}", hop=hop.alias) from None
        finally:
            self.transport.auth_timeout = limit

    def _password(self) -> None:
        hop = self.hop
        question = Question(hop.alias, hop.label, f"{hop.user}@{hop.hostname}'s password: ",
                            echo=False, kind="password")
        if self.ask is None:
            raise self._needed(question)
        answer = self.ask(question)
        try:
            self.transport.auth_password(hop.user, answer, fallback=False)
        except paramiko.AuthenticationException:
            self._check_alive()
            raise self._answer_refused(question) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._check_alive(f": {exc}")
            raise AuthError(f"{hop.label} failed the password login of {hop.user}: {exc}",
                            hop=hop.alias) from None
        finally:
            del answer

    # messages -------------------------------------------------------------------
    def _needed(self, question: Question) -> AnswerNeeded:
        hop, text = self.hop, question.text.strip()
        what = _what(question)
        if self.accepted is not None:
            start = f"{hop.label} accepted the key of {hop.user} but also asks for {what}"
        elif self.tried:
            start = (f"{hop.label} refused to log in {hop.user} with a key (tried "
                     f"{', '.join(self.tried)}) and asks for {what} instead")
        else:
            start = f"{hop.label} asks {hop.user} for {what}"
        return AnswerNeeded(f"{start}: '{text}' — {HOW_TO_ANSWER}", hop=hop.alias)

    def _answer_refused(self, question: Question) -> AnswerRefused:
        kind = {"password": "password", "passphrase": "passphrase"}.get(question.kind, "code")
        return AnswerRefused(f"{self.hop.label} refused the answer to '{question.text.strip()}'"
                             f" (a wrong {kind}?): nothing was retried; open the tunnel again "
                             "to give a new one", hop=self.hop.alias)

    def _refused(self, allowed: list[str]) -> AuthError:
        hop = self.hop
        if self._locked_unasked:
            keys = ", ".join(self._locked_unasked)
            return AnswerNeeded(
                f"{hop.label} refused to log in {hop.user}: the key {keys} needs its "
                f"passphrase, and no agent holds the key — {HOW_TO_ANSWER}, or add the key to "
                f"ssh-agent (ssh-add {self._locked_unasked[0]})", hop=hop.alias)
        if "publickey" not in allowed and allowed and not self.tried:
            return AuthError(
                f"{hop.label} does not accept public keys for {hop.user} (it allows: "
                f"{', '.join(allowed)}), and jupyter_tunnel cannot answer those",
                hop=hop.alias)
        what = ", ".join(self.tried) if self.tried else "no key was found"
        extra = ("; " + "; ".join(self.notes)) if self.notes else ""
        return AuthError(
            f"{hop.label} refused to log in {hop.user}: tried {what}{extra}. Check User and "
            "IdentityFile for this host in your ssh config, or add the key to ssh-agent",
            hop=hop.alias)
