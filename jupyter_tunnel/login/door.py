"""Answers from another process of the same user: ``jupyter tunnel answer NAME``, or the
terminal that started a ``--detach`` open, answering a question that a tunnel of a
background process (or of the Jupyter server) waits for.

While a question waits in a tunnel's :class:`~.mailbox.Mailbox`, the tunnel's process
listens on a Unix socket (:func:`door_path`: 0600, in the user's 0700 control folder; a
process of another user is refused by ``SO_PEERCRED``).  One request per connection: a
JSON line ``{"id", "answer"}``; the reply is ``{"ok": true}`` or ``{"error", "kind"}``.
The answer passes through and is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends.openssh_files import secure_dir
from ..errors import NoQuestionWaiting, TunnelError
from .unix_socket import connections, listen_private, peer, read_line

log = logging.getLogger(__name__)

_LIMIT = 16384
#: folders of ours that a door removes when it leaves them empty
_FOLDER_PREFIX = "jupyter_tunnel-"


def door_path(registry_dir: Path, name: str) -> Path:
    """Where the process of tunnel ``name`` (of the registry at ``registry_dir``) takes
    answers while a question waits: a socket in a 0700 folder of the user in /tmp, one
    folder per registry, short enough for a socket address whatever the registry's path."""
    registry = str(Path(registry_dir).absolute())
    tmp = tempfile.gettempdir()
    if len(tmp) > 40 or not tmp.startswith("/"):
        tmp = "/tmp"  # noqa: S108 - a 0700 folder of ours, checked by secure_dir
    folder = f"{_FOLDER_PREFIX}{os.getuid()}-answers-{_digest(registry)[:10]}"
    return Path(tmp) / folder / f"{_digest(registry + chr(0) + name)[:16]}.sock"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def door_of(registry_dir: Path, tunnel: Any) -> Callable[[], Path]:
    """:func:`door_path` of ``tunnel`` as it is named when it asks (a claim may rename it)."""
    return lambda: door_path(registry_dir, tunnel.name)


def sweep_doors(registry_dir: Path) -> list[Path]:
    """Remove the doors of the registry at ``registry_dir`` that nothing listens on any
    more (their process was killed while a question waited), and their folder once empty;
    the paths removed."""
    folder = door_path(registry_dir, "-").parent
    gone: list[Path] = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.iterdir()):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                try:
                    probe.connect(str(path))
                    continue  # a live door: its process answers
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
                except OSError:
                    continue  # not a socket of ours to judge
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                gone.append(path)
        folder.rmdir()
    return gone


class Door:
    """Serves answer requests at ``path`` until :meth:`close`; ``take(id, answer)`` hands
    each to the waiting question (raising :class:`TunnelError` to refuse it)."""

    def __init__(self, path: Path, take: Callable[[str, str], None]) -> None:
        self.path, self._take = path, take
        self._closed = threading.Event()
        for attempt in (1, 2):
            secure_dir(path.parent)
            try:
                self._sock = listen_private(path, 4)
                break
            except FileNotFoundError:  # another door removed the folder just now
                if attempt == 2:
                    raise
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name="jupyter_tunnel-answers")
        self._thread.start()

    def _serve(self) -> None:
        for conn in connections(self._sock, self._closed.is_set):
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.sendall(json.dumps(self._handle(conn)).encode() + b"\n")

    def _handle(self, conn: socket.socket) -> dict[str, object]:
        _, uid = peer(conn)
        if uid != os.getuid():
            log.warning("an answer from uid %d was refused", uid)
            return {"error": "refused: not the tunnel's user", "kind": "not-allowed"}
        line = read_line(conn, _LIMIT)
        try:
            body = json.loads(line.decode())
            question_id, answer = body["id"], body["answer"]
        except (ValueError, KeyError, TypeError):
            return {"error": "a malformed answer request", "kind": "bad-request"}
        try:
            self._take(question_id, answer)
        except TunnelError as exc:
            return {"error": exc.message, "kind": exc.kind}
        return {"ok": True}

    def close(self) -> None:
        """Stop serving and remove the socket; idempotent."""
        self._closed.set()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.path.parent.name.startswith(_FOLDER_PREFIX):
            with contextlib.suppress(OSError):  # not empty: another door of the user is open
                self.path.parent.rmdir()
        if self._thread is not threading.current_thread():
            self._thread.join(1)


def knock(path: Path, question_id: str, answer: str, name: str, wait: float = 5.0) -> None:
    """Send ``answer`` for question ``question_id`` to the process that listens at ``path``
    (tunnel ``name``); raise :class:`TunnelError` with its reason if it was not taken.
    The door opens a moment after the question is shown: try for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(str(path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise NoQuestionWaiting(
                    f"no process takes answers for tunnel {name}: its question is asked on "
                    "the terminal that opened it, or it no longer waits") from None
            time.sleep(0.1)
        except OSError as exc:
            sock.close()
            raise TunnelError(f"cannot reach the process of tunnel {name}: {exc}") from None
    with sock:
        try:
            sock.sendall(json.dumps({"id": question_id, "answer": answer}).encode() + b"\n")
            reply = sock.makefile("rb").readline()
        except OSError as exc:
            raise TunnelError(f"the process of tunnel {name} did not reply: {exc}") from None
    try:
        body = json.loads(reply)
    except ValueError:
        raise TunnelError(f"the process of tunnel {name} did not reply") from None
    if body.get("ok") is True:
        return
    message = str(body.get("error") or "the answer was not taken")
    if body.get("kind") == "no-question":
        raise NoQuestionWaiting(message)
    raise TunnelError(message)
