"""`jupyter tunnel answer NAME`: answer what a hop asks a tunnel that another process opens
(a ``--detach`` tunnel, one of the Jupyter server's), and what the terminal that started a
``--detach`` open answers before it detaches.  Both reach that process through its
:mod:`~.login.door`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from .cli_base import BaseTunnelApp
from .errors import AnswerNeeded, NoQuestionWaiting, SpecError, TunnelError
from .login.door import door_path, knock
from .login.mailbox import Mailbox, check_answer
from .login.questions import Question
from .login.terminal import TerminalAsk, terminal_usable
from .manager import TunnelManager


def question_of(prompt: Any) -> Question:
    """The :class:`Question` of a tunnel JSON's ``prompt``."""
    try:
        return Question(hop=str(prompt["hop"]), label=str(prompt["label"]),
                        text=str(prompt["text"]), echo=bool(prompt["echo"]),
                        kind=str(prompt["kind"]), instructions=str(prompt.get("instructions")
                                                                   or ""),
                        id=str(prompt["id"]))
    except (KeyError, TypeError, ValueError):
        raise TunnelError("the tunnel's question cannot be read; try again") from None


def send_answer(manager: TunnelManager, name: str, question: Question, answer: str) -> None:
    """Hand ``answer`` to the process of tunnel ``name`` that waits for ``question``."""
    knock(door_path(manager.registry.path, name), question.id, check_answer(answer), name)


class Relayed(Mailbox):
    """How the background process of ``--detach`` asks: each question goes out as a JSON
    line ``{"prompt", "name"}`` on its stdout, which the terminal that started it reads
    until the tunnel is ready (:func:`answer_for_child`); the answer comes back through the
    door.  Later questions (a reconnect) are answered with ``jupyter tunnel answer``."""

    def __init__(self, limit: float) -> None:
        super().__init__(limit)
        #: the tunnel's name when asked (a claim may have changed it)
        self.name: Callable[[], str] = lambda: ""

    def __call__(self, question: Question) -> str:
        with contextlib.suppress(OSError, ValueError):  # the parent may be gone
            print(json.dumps({"prompt": question.to_dict(), "name": self.name()}), flush=True)
        return super().__call__(question)


def answer_for_child(manager: TunnelManager, message: dict[str, Any], can_ask: bool) -> None:
    """The terminal that started a ``--detach`` open answers its child's question (or,
    ``can_ask`` False, says how to answer it); problems are told on stderr, the child
    reports how its open ended."""
    name = str(message.get("name") or "")
    try:
        question = question_of(message.get("prompt"))
        if not can_ask:
            print(f"{question.display.strip()}\n  answer it with: jupyter tunnel answer {name}",
                  file=sys.stderr, flush=True)
            return
        send_answer(manager, name, question, TerminalAsk(manager.answer_timeout)(question))
    except TunnelError as exc:
        print(f"jupyter tunnel: {exc.message}", file=sys.stderr, flush=True)


class AnswerApp(BaseTunnelApp):
    """jupyter tunnel answer NAME."""

    name = "jupyter-tunnel-answer"
    description = """Answer the question a hop asks (a one-time code, a password, a key's
    passphrase) while another process opens or reconnects tunnel NAME: a --detach tunnel,
    or one the Jupyter server opens. The question is shown and the answer read on the
    terminal (without echo for a secret); without a terminal, the answer is the first line
    of standard input."""
    examples = """
jupyter tunnel answer beast
oathtool --totp -b "$SECRET" | jupyter tunnel answer beast
"""

    def start(self) -> None:
        name = self.name_arg()
        manager = self.manager()
        try:
            record = manager.status(name)
            prompt = record.get("prompt")
            if not prompt:
                raise NoQuestionWaiting(f"tunnel {name} waits for no answer now (it is "
                                        f"{record.get('state')})")
            question = question_of(prompt)
            if terminal_usable():
                answer = TerminalAsk(manager.answer_timeout)(question)
            else:
                self.say(question.display)
                line = sys.stdin.readline() if sys.stdin else ""
                if not line:
                    raise AnswerNeeded(f"{question.display.strip()}: give the answer on "
                                       "standard input or run this on a terminal",
                                       hop=question.hop)
                answer = line.rstrip("\r\n")
            if not answer:
                raise SpecError("the answer is empty: nothing was sent")
            send_answer(manager, name, question, answer)
            del answer
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps({"answered": name, "hop": question.hop, "id": question.id}),
                  flush=True)
        else:
            self.say(f"Answered {question.label}; tunnel {name} goes on "
                     f"(jupyter tunnel status {name}).")
