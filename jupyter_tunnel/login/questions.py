"""What a hop asks during a login, and the callback that gets it answered.

A backend that meets a question it cannot answer itself (a keyboard-interactive round, a
password, the passphrase of a key file) builds a :class:`Question` and calls the tunnel's
``Ask`` callback, which returns the answer or raises a :class:`~jupyter_tunnel.errors.
AuthError` subclass (:class:`~jupyter_tunnel.errors.AnswerNeeded` when no one can be
asked, :class:`~jupyter_tunnel.errors.AnswerTimeout` when no answer came).  Answers are
secrets: never logged, stored, put in argv or an environment, or kept after use.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HOW_TO_ANSWER", "KINDS", "Ask", "Question"]

#: what an AnswerNeeded message tells people to do (the front ends that can ask today)
HOW_TO_ANSWER = ("open the tunnel in the foreground from a terminal (jupyter tunnel open …), "
                 "or with --detach and answer with jupyter tunnel answer NAME, or from the "
                 "JupyterLab panel, or from Python with open_tunnel(…, prompt=…) to answer it")

#: what a question is for
KINDS = ("keyboard-interactive", "password", "passphrase")


@dataclass(frozen=True)
class Question:
    """One prompt of a server (or a key file), for a person.

    ``text`` is the server's own words, as sent: show it as text, never as HTML.
    ``echo`` False means a secret: no echo, a password field.
    """

    hop: str  # the hop's alias, as in errors (``unicorn``)
    label: str  # how messages name it: ``unicorn (10.0.0.2)``
    text: str  # the prompt itself, e.g. "One-time password (OATH) for `alice': "
    echo: bool = False
    kind: str = "keyboard-interactive"
    #: keyboard-interactive's name and instruction lines, when the server sent any
    instructions: str = ""
    id: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown question kind {self.kind!r}")

    @property
    def display(self) -> str:
        """The one line a person reads: ``unicorn (10.0.0.2) asks: One-time password …``."""
        return f"{self.label} asks: {self.text.strip()}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (REST ``prompt``): ``{"id", "hop", "text", "echo"}`` and more."""
        return {"id": self.id, "hop": self.hop, "label": self.label, "text": self.text,
                "echo": self.echo, "kind": self.kind, "instructions": self.instructions}


#: called by a backend with a question; returns the answer (a secret) or raises an
#: AuthError subclass; may block (a person types), up to the tunnel's answer timeout
Ask = Callable[[Question], str]
