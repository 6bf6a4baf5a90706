"""The ``SSH_ASKPASS`` program of the ``openssh`` backend: hands ssh's question to the
process that opens the tunnel, and ssh the answer.

ssh runs it as ``askpass PROMPT`` (with ``SSH_ASKPASS_REQUIRE=force``) and reads the answer
from its standard output; exit status 1 means "cancelled".  It connects to the Unix socket
named by ``JT_ASK_SOCKET`` (see :mod:`.askserver`), sends one JSON line (the prompt, ssh's
``SSH_ASKPASS_PROMPT`` hint, its parent's pid: the ssh that asks) and gets one back:
``{"answer": …}`` or ``{"error": …}``.  The answer passes through a pipe only: never argv,
the environment or a file.  Standard library only, so it starts fast.
"""

from __future__ import annotations

import json
import os
import socket
import sys

#: the environment variable that names the socket of the process that asks
SOCKET_ENV = "JT_ASK_SOCKET"
#: at most this much is read back (an answer is a line)
_LIMIT = 1 << 16


def request(path: str, prompt: str, hint: str, ppid: int) -> dict[str, str]:
    """One question over the socket at ``path``; the reply (``answer`` or ``error``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        line = json.dumps({"prompt": prompt, "hint": hint, "ppid": ppid}) + "\n"
        conn.sendall(line.encode())
        conn.shutdown(socket.SHUT_WR)
        data = bytearray()
        while len(data) < _LIMIT:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(bytes(data).decode())
    except ValueError:
        return {"error": "no answer"}
    finally:
        data[:] = b"\0" * len(data)
    return reply if isinstance(reply, dict) else {"error": "no answer"}


def main(argv: list[str] | None = None) -> int:
    """``askpass PROMPT``: print the answer (exit 0) or say why not (exit 1)."""
    args = sys.argv[1:] if argv is None else argv
    prompt = args[0] if args else ""
    hint = os.environ.get("SSH_ASKPASS_PROMPT", "")
    if hint == "none":  # a notice (touch your security key): nothing to answer
        return 0
    path = os.environ.get(SOCKET_ENV)
    if not path:
        print("jupyter_tunnel askpass: no JT_ASK_SOCKET", file=sys.stderr)
        return 1
    try:
        reply = request(path, prompt, hint, os.getppid())
    except OSError as exc:
        print(f"jupyter_tunnel askpass: {exc}", file=sys.stderr)
        return 1
    answer = reply.get("answer")
    if not isinstance(answer, str):
        print(f"jupyter_tunnel askpass: {reply.get('error', 'no answer')}", file=sys.stderr)
        return 1
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
