"""Asking in a notebook, and the default of ``open_tunnel``.

While a cell runs, ipykernel puts its own ``getpass.getpass`` and ``input`` in place: they
send the question to the notebook, which shows an input box under the cell (a password box
for ``getpass``), and return what the person typed.  :class:`NotebookAsk` asks through
them, the hop named, from the tunnel's asking thread (ipykernel routes that thread's
request to the running cell).  When no cell runs (a reconnect while the kernel is idle)
the question waits in the ask's mailbox instead: the tunnel's card shows an answer box
for it, and ``jupyter tunnel answer`` reaches it too.  Nothing here imports Jupyter: the
kernel's functions are found where it puts them.
"""

from __future__ import annotations

import builtins
import getpass
from collections.abc import Callable

from ..errors import AnswerNeeded
from .mailbox import Mailbox
from .questions import Ask, Question
from .terminal import TerminalAsk, terminal_usable


def kernel_input() -> tuple[Callable[..., str], Callable[..., str]] | None:
    """The kernel's ``(getpass, input)`` while one of its cells runs, else None."""
    owner = getattr(getpass.getpass, "__self__", None)
    if owner is None or not type(owner).__module__.startswith("ipykernel"):
        return None
    return getpass.getpass, builtins.input


class NotebookAsk(Mailbox):
    """An :data:`~.questions.Ask` through the running cell's input box, or (no cell runs)
    a mailbox that the card's answer box and ``jupyter tunnel answer`` answer."""

    def __call__(self, question: Question) -> str:
        found = kernel_input()
        if found is None:
            return super().__call__(question)
        secret, plain = found
        text = question.display.rstrip() + " "
        if question.instructions:
            text = question.instructions.rstrip() + "\n" + text
        try:
            return plain(text) if question.echo else secret(text)
        except EOFError:
            raise AnswerNeeded(f"{question.display.strip()} — and the input was closed "
                               "without an answer", hop=question.hop) from None


def default_ask(timeout: float) -> Ask | None:
    """Who answers when the caller named no one: the notebook while a cell runs, else the
    terminal if there is one, else no one."""
    if kernel_input() is not None:
        return NotebookAsk(timeout + 5)
    if terminal_usable():
        return TerminalAsk(timeout)
    return None
