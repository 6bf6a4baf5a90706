"""The byte server of the benchmark, run on beast (standard library only).

Listens on 127.0.0.1 (port argv[1], or any) and prints the port.  What it sends is
random bytes (one random MiB, made at start and repeated), so that compression could not
help a contender.  Each connection sends one line: ``GET n`` (send n bytes, close),
``PUT n`` (read n bytes, answer ``OK``), ``ECHO`` (echo until EOF) or ``STREAM`` (send
until the client goes away).
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = 1 << 20
BLOCK = os.urandom(CHUNK)  # incompressible, made once (not per send)


def _line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        got = conn.recv(1)
        if not got:
            raise OSError("closed before a command")
        data += got
    return data.decode().strip()


def serve(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = memoryview(bytearray(CHUNK))
    try:
        cmd, *rest = _line(conn).split()
        if cmd == "GET":
            left = int(rest[0])
            while left:
                left -= conn.send(BLOCK[:min(left, CHUNK)])
        elif cmd == "PUT":
            left = int(rest[0])
            while left:
                n = conn.recv_into(buf, min(left, CHUNK))
                if not n:
                    return
                left -= n
            conn.sendall(b"OK\n")
        elif cmd == "ECHO":
            while data := conn.recv(65536):
                conn.sendall(data)
        elif cmd == "STREAM":
            while True:
                conn.sendall(BLOCK)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    srv.listen(256)
    print(srv.getsockname()[1], flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
