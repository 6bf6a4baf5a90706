"""The other end of :mod:`.askpass`: a Unix socket served by a thread of the process that
opens the tunnel, which turns each request into a :class:`~.questions.Question` and gets
it answered through the tunnel's ``Ask`` callback.

The socket is 0600 in a 0700 folder of this user, and a request from a process of another
user is refused (``SO_PEERCRED``).  An answer passes through: it is written to the
connection and dropped, never logged or kept.  When ``ask`` raises (no one can be asked,
no answer in time), the error is kept for the login to raise, and ``on_error`` runs before
the askpass program is told: it ends the ssh that asked, so ssh never sends an empty
answer that a server would count as a failed try.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import AnswerNeeded, TunnelError
from .questions import Ask, Question
from .unix_socket import connections, listen_private, peer, read_line

log = logging.getLogger(__name__)

_LIMIT = 1 << 16


@dataclass(frozen=True)
class Request:
    """What an askpass program sent: ssh's prompt, its ``SSH_ASKPASS_PROMPT`` hint, the
    askpass process (from the socket) and its parent, the ssh that asks."""

    prompt: str
    hint: str
    pid: int | None
    ppid: int | None


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class AskServer:
    """Answers askpass requests on the socket at ``path`` until :meth:`close`.

    ``question(request)`` names the hop and makes the :class:`Question` (or returns None:
    the request is refused without asking anyone, e.g. a yes/no confirmation).
    """

    def __init__(self, path: Path, ask: Ask, question: Callable[[Request], Question | None],
                 on_error: Callable[[TunnelError], None] | None = None) -> None:
        self.path = path
        self._ask, self._question, self._on_error = ask, question, on_error
        #: the questions answered so far (never the answers), in order
        self.answered: list[Question] = []
        #: the error ``ask`` raised, if it did: the login failed because of it
        self.error: TunnelError | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._waited = 0.0  # seconds spent in ask() by questions already answered
        self._asking: dict[int, float] = {}  # questions being asked: when each started
        self._sock = listen_private(path, 8)
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="jupyter_tunnel-askpass")
        self._thread.start()

    def _serve(self) -> None:
        for conn in connections(self._sock, self._closed.is_set):
            with self._lock:
                if self._closed.is_set():
                    conn.close()
                    break
                self._conns.add(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True,
                             name="jupyter_tunnel-askpass-question").start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            request = self._read(conn)
            if request is None:
                return
            reply = self._answer(request)
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode())
            reply.clear()
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _read(self, conn: socket.socket) -> Request | None:
        pid, uid = peer(conn)
        if uid != os.getuid():
            log.warning("askpass request from uid %d refused", uid)
            return None
        line = read_line(conn, _LIMIT)
        try:
            body = json.loads(line.decode())
            prompt, hint = str(body["prompt"]), str(body.get("hint", ""))
            sent = body.get("ppid")
        except (ValueError, KeyError, TypeError):
            return None
        ppid = parent_of(pid) if pid > 0 else None
        if ppid is None and isinstance(sent, int):
            ppid = sent
        return Request(prompt, hint, pid if pid > 0 else None, ppid)

    def _answer(self, request: Request) -> dict[str, str]:
        if self.error is not None:
            return {"error": "an earlier question was not answered"}
        try:
            question = self._question(request)
        except TunnelError as exc:
            return {"error": str(exc)}
        if question is None:
            return {"error": "not asked"}
        started = time.monotonic()
        with self._lock:
            self._asking[id(request)] = started
        try:
            answer = self._ask(question)
        except Exception as exc:  # any failure to ask ends the login
            error = exc if isinstance(exc, TunnelError) else AnswerNeeded(
                f"{question.label} asks a question ({question.text.strip()}) that could not "
                f"be put to anyone: {exc}", hop=question.hop)
            with self._lock:
                self.error = self.error or error
            if self._on_error is not None:
                self._on_error(error)
            return {"error": str(error)}
        finally:
            with self._lock:
                del self._asking[id(request)]
                self._waited += time.monotonic() - started
        if not isinstance(answer, str):
            return {"error": "no answer"}
        with self._lock:
            self.answered.append(question)
        return {"answer": answer}

    def busy(self) -> bool:
        """Whether a question is being asked now."""
        with self._lock:
            return bool(self._asking)

    def waited(self) -> float:
        """Seconds spent waiting for answers so far (the login's own time excludes them)."""
        now = time.monotonic()
        with self._lock:
            return self._waited + sum(now - t for t in self._asking.values())

    def close(self) -> None:
        """Stop serving; remove the socket; close connections still open (their askpass
        programs exit 1).  Idempotent."""
        self._closed.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._thread is not threading.current_thread():
            self._thread.join(1)
