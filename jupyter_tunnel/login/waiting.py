"""The tunnel's side of a question: hand it to the front end, wait for the answer (up to the
answer timeout), and let the tunnel show that it waits.

A front end gives either an :data:`~.questions.Ask` (``ask(question) -> answer``) or, the
simpler form of ``open_tunnel(prompt=…)``, a :data:`Prompt` (``prompt(hop, text, echo) ->
answer``); :func:`as_ask` makes the one from the other.  :class:`Waiter` is what the
tunnel gives its backend: it calls the front end in a thread of its own, so a person who
never answers (or a closed tunnel) cannot hold the login forever.  Answers pass through and
are not kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import AnswerNeeded, AnswerTimeout, TunnelError
from .questions import Ask, Question

#: the simple form of a front end's callback: (hop, the server's prompt, echo) -> answer
Prompt = Callable[[str, str, bool], str]
#: told the question being waited for, then None once it is answered (or given up)
Showing = Callable[[Question | None], None]


def as_ask(prompt: Prompt) -> Ask:
    """An Ask calling ``prompt(hop, text, echo)``."""
    def ask(question: Question) -> str:
        return prompt(question.hop, question.text, question.echo)
    return ask


class Waiter:
    """Ask ``front`` each question, waiting at most ``timeout`` seconds; ``cancelled()``
    True ends the wait early (the tunnel was closed)."""

    def __init__(self, front: Ask, timeout: float, show: Showing,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self.front, self.timeout, self.show, self.cancelled = front, timeout, show, cancelled

    def __call__(self, question: Question) -> str:
        outcome: list[tuple[bool, object]] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, self.front(question)))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))
            finally:
                done.set()

        self.show(question)
        try:
            threading.Thread(target=run, daemon=True, name="jupyter_tunnel-ask").start()
            end = time.monotonic() + self.timeout if self.timeout > 0 else None
            while not done.wait(0.2):
                if self.cancelled():
                    raise TunnelError(f"the tunnel was closed while {question.label} waited "
                                      "for an answer", hop=question.hop)
                if end is not None and time.monotonic() >= end:
                    raise AnswerTimeout(
                        f"no answer to '{question.text.strip()}' ({question.label} asks) "
                        f"within {self.timeout:g} s: open the tunnel again and answer sooner "
                        "(TunnelManager.answer_timeout sets the limit)", hop=question.hop)
        finally:
            self.show(None)
            withdraw = getattr(self.front, "withdraw", None)
            if not done.is_set() and withdraw is not None:
                withdraw(question.id)  # a front end that holds the question lets it go now
        ok, value = outcome[0]
        if not ok:
            if isinstance(value, TunnelError):
                raise value
            if isinstance(value, (KeyboardInterrupt, SystemExit)):
                raise value
            raise AnswerNeeded(f"{question.label} asks '{question.text.strip()}', and it could "
                               f"not be asked: {type(value).__name__}: {value}",
                               hop=question.hop) from None
        if not isinstance(value, str):
            raise AnswerNeeded(f"{question.label} asks '{question.text.strip()}', and the "
                               f"answer given was not text ({type(value).__name__})",
                               hop=question.hop)
        return value
