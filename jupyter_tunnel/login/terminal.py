"""Asking on the terminal (``jupyter tunnel open`` in the foreground): the question on
``/dev/tty``, the answer read from it, without echo for a secret, as ssh does.

The answer is read with a deadline (the answer timeout) so a terminal left alone does not
hold the open; the terminal's settings are restored afterwards, and at exit should the
process end in the middle of a question (Ctrl-C).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import termios
import threading
import time
from typing import Any

from ..errors import AnswerNeeded, AnswerTimeout
from .questions import Question

TTY = "/dev/tty"


def terminal_usable() -> bool:
    """Whether this process can ask a person: stdin is a terminal and /dev/tty opens."""
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        os.close(os.open(TTY, os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


class TerminalAsk:
    """An :data:`~.questions.Ask` on /dev/tty, one question at a time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._saved: tuple[int, list[Any]] | None = None
        atexit.register(self.restore)

    def restore(self) -> None:
        """Put the terminal's echo back if a question was cut short."""
        saved, self._saved = self._saved, None
        if saved is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(saved[0], termios.TCSAFLUSH, saved[1])

    def __call__(self, question: Question) -> str:
        with self._lock:
            try:
                fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY)
            except OSError as exc:
                raise AnswerNeeded(f"{question.display.strip()} — but the terminal cannot be "
                                   f"opened ({exc.strerror})", hop=question.hop) from None
            try:
                return self._ask(fd, question)
            finally:
                self.restore()
                os.close(fd)

    def _ask(self, fd: int, question: Question) -> str:
        if not question.echo:
            # echo off before the prompt shows, as ssh's readpassphrase does: the flush
            # drops only what was typed before it (set after the prompt, an answer typed at
            # once was echoed, then thrown away by the flush, and the question hung)
            old = termios.tcgetattr(fd)
            new = list(old)
            new[3] = int(new[3]) & ~termios.ECHO  # lflag
            termios.tcsetattr(fd, termios.TCSAFLUSH, new)
            self._saved = (fd, old)
        if question.instructions:
            os.write(fd, (question.instructions.rstrip() + "\n").encode())
        os.write(fd, (question.display + " ").encode())
        data = b""
        end = time.monotonic() + self.timeout if self.timeout > 0 else None
        try:
            while not data.endswith(b"\n"):
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise AnswerTimeout(f"no answer to '{question.text.strip()}' "
                                        f"({question.label} asks) within {self.timeout:g} s",
                                        hop=question.hop)
                ready, _, _ = select.select([fd], [], [], None if left is None else min(left, 1))
                if not ready:
                    continue
                chunk = os.read(fd, 1024)
                if not chunk:
                    raise AnswerNeeded(f"{question.label} asks '{question.text.strip()}', and "
                                       "the terminal was closed before an answer",
                                       hop=question.hop)
                data += chunk
        finally:
            if not question.echo:
                self.restore()
                os.write(fd, b"\n")  # the Enter was not echoed
        answer = data.decode(errors="replace").rstrip("\r\n")
        del data
        return answer
