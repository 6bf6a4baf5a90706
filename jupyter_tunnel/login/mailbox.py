"""Answers that arrive from elsewhere: a question waits in a :class:`Mailbox` until a request
(the REST API's ``POST …/tunnels/NAME/answer``, ``jupyter tunnel answer NAME``) brings its
answer.

The Jupyter server and a ``--detach`` background process have no person at hand, so their
tunnels ask through a mailbox.  The tunnel shows the waiting question (its JSON's
``prompt``, with the question's ``id``) and whoever answers names that id: an answer meant
for one question never reaches the next.  The tunnel's :class:`~.waiting.Waiter` keeps the
answer timeout; the mailbox only holds the question until then (``limit``).  Answers pass
through and are not kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..errors import NoQuestionWaiting, SpecError, TunnelError
from .door import Door
from .questions import Question

log = logging.getLogger(__name__)

#: the longest answer taken (a passphrase may be long; nothing a person types is longer)
MAX_ANSWER = 4096


def check_answer(answer: object) -> str:
    """``answer`` if it can be an answer (one line of text), else :class:`SpecError`."""
    if not isinstance(answer, str):
        raise SpecError("'answer' must be a string")
    if len(answer) > MAX_ANSWER:
        raise SpecError(f"the answer is longer than {MAX_ANSWER} characters")
    if any(c in answer for c in "\r\n\0"):
        raise SpecError("the answer must be one line (no line break or NUL)")
    return answer


def check_question_id(question_id: object) -> str:
    """A question id as the tunnel JSON's ``prompt.id`` gives it, else :class:`SpecError`."""
    if not isinstance(question_id, str) or not question_id or len(question_id) > 64 \
            or not question_id.isalnum():
        raise SpecError("'id' must be the id of the waiting question (the tunnel's prompt.id)")
    return question_id


class _Slot:
    def __init__(self, question: Question) -> None:
        self.question = question
        self.answer: str | None = None
        self.closed = False


class Mailbox:
    """An :data:`~.questions.Ask` whose answers come through :meth:`answer`.

    ``limit``: seconds a question is held at most (the tunnel's answer timeout ends the
    wait sooner; this only frees the asking thread in any case).  ``door``: while a
    question waits, other processes of the user may answer it there (:mod:`.door`).
    """

    def __init__(self, limit: float = 600.0, door: Callable[[], Path] | None = None) -> None:
        self.limit = limit
        self.door = door
        self._cond = threading.Condition()
        self._slots: dict[str, _Slot] = {}
        self._closed = False
        self._open_door: Door | None = None
        #: called once a question waits here (after the tunnel showed it): a view that
        #: offers an answer box for questions held here can show it now
        self.on_wait: Callable[[], None] = lambda: None

    def __call__(self, question: Question) -> str:
        slot = _Slot(question)
        end = time.monotonic() + self.limit
        with self._cond:
            if self._closed:
                raise TunnelError("the tunnel was closed", hop=question.hop)
            self._slots[question.id] = slot
            self._open()
        try:
            self.on_wait()
            with self._cond:
                while slot.answer is None and not slot.closed:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        finally:
            with self._cond:
                del self._slots[question.id]
            self._close_door_if_idle()
        answer, slot.answer = slot.answer, None
        if answer is None:
            raise TunnelError(f"no answer came for {question.label}'s question", hop=question.hop)
        return answer

    def waiting(self) -> list[Question]:
        """The questions waiting now (normally at most one)."""
        with self._cond:
            return [slot.question for slot in self._slots.values()]

    def answer(self, question_id: str, answer: str) -> None:
        """Hand ``answer`` to the question ``question_id``; :class:`NoQuestionWaiting` if no
        such question waits (already answered, timed out, or never asked)."""
        answer = check_answer(answer)
        with self._cond:
            slot = self._slots.get(question_id)
            if slot is None or slot.answer is not None or slot.closed:
                raise NoQuestionWaiting("that question no longer waits for an answer (answered "
                                        "already, timed out, or replaced by a new one)")
            slot.answer = answer
            self._cond.notify_all()

    def withdraw(self, question_id: str) -> None:
        """The asker gave up on ``question_id`` (the answer timeout, a close): it takes no
        answer any more, and the door closes now if no other question waits (this process
        may be about to exit: the socket must not be left behind)."""
        with self._cond:
            slot = self._slots.get(question_id)
            if slot is not None:
                slot.closed = True
                self._cond.notify_all()
        self._close_door_if_idle()

    def close(self) -> None:
        """End every wait (the tunnel is closing); later questions fail at once."""
        with self._cond:
            self._closed = True
            for slot in self._slots.values():
                slot.closed = True
            self._cond.notify_all()
        self._close_door_if_idle()

    def _close_door_if_idle(self) -> None:
        with self._cond:
            door = self._open_door
            if door is None or any(not slot.closed for slot in self._slots.values()):
                return
            self._open_door = None
        door.close()  # not under the lock: its thread may be handing in an answer

    def _open(self) -> None:
        if self.door is None or self._open_door is not None:
            return
        try:
            self._open_door = Door(self.door(), self.answer)
        except (OSError, TunnelError) as exc:  # the REST API and the terminal still answer
            log.warning("answers from other processes cannot be taken: %s", exc)


class _Answerable(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ask(self) -> object: ...
    @property
    def question(self) -> Question | None: ...


def deliver(tunnel: _Answerable, question_id: str, answer: str) -> None:
    """Answer the question ``tunnel`` shows (its ``prompt``), if that tunnel asks through a
    mailbox; :class:`NoQuestionWaiting` with the reason otherwise."""
    check_question_id(question_id)
    check_answer(answer)
    question = tunnel.question
    if question is None:
        raise NoQuestionWaiting(f"tunnel {tunnel.name} waits for no answer now")
    if question.id != question_id:
        raise NoQuestionWaiting(f"that question of tunnel {tunnel.name} no longer waits: it "
                                "was answered, timed out, or a new one replaced it (see its "
                                "prompt)")
    if not isinstance(tunnel.ask, Mailbox):
        raise NoQuestionWaiting(f"tunnel {tunnel.name} asks on the terminal that opened it: "
                                "answer it there")
    tunnel.ask.answer(question_id, answer)
