"""The measuring client of the benchmark (standard library only).

Run on this machine against a tunnel's local ports, or inside beast's network namespace
against the services themselves (the ceiling).  Each command prints one JSON object.

  download URL TOKEN REPEAT         GET a file REPEAT times: MB/s of each
  up|down HOST PORT BYTES REPEAT    upload to / download from the byte server: MB/s
  latency HOST PORT COUNT           100-byte round trips on one connection: ms
  stream HOST PORT                  download from the byte server until SIGTERM, then
                                    print the bytes received and the seconds it ran
  sequential URL TOKEN COUNT        COUNT requests, each on a new connection: ms, errors
  concurrent URL TOKEN COUNT [SIZE] COUNT connections at once, each GETs URL (status 200,
                                    a body of Content-Length bytes, SIZE when given): ms,
                                    errors

Whatever is uploaded is random bytes (made once), as the byte server sends.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time
import urllib.parse
from typing import Any

CHUNK = 1 << 20


def _connection(url: str, timeout: float = 60.0) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=timeout)
    return conn, parts.path + (f"?{parts.query}" if parts.query else "")


def _get(url: str, token: str, buf: memoryview) -> int:
    """GET ``url`` on a new connection; return the bytes of the body."""
    conn, path = _connection(url)
    try:
        conn.request("GET", path, headers={"Authorization": f"token {token}"})
        response = conn.getresponse()
        if response.status != 200:
            raise OSError(f"HTTP {response.status} for {path}")
        total = 0
        while n := response.readinto(buf):
            total += n
        return total
    finally:
        conn.close()


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max of samples in seconds, as milliseconds (nearest rank: the sample
    at index ``int(q * n)`` of the sorted samples), and their number."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": ordered[-1] * 1e3,
            "n": len(ordered)}


def download(url: str, token: str, repeat: int) -> dict[str, Any]:
    buf = memoryview(bytearray(CHUNK))
    rates, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = _get(url, token, buf)
        rates.append(size / (time.perf_counter() - t0) / 1e6)
    return {"mbps": rates, "bytes": size * repeat}


def _command(host: str, port: int, line: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(line.encode() + b"\n")
    return sock


def transfer(direction: str, host: str, port: int, size: int, repeat: int) -> dict[str, Any]:
    block = os.urandom(CHUNK)
    buf = memoryview(bytearray(CHUNK))
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with _command(host, port, f"{'PUT' if direction == 'up' else 'GET'} {size}") as sock:
            if direction == "up":
                left = size
                while left:
                    left -= sock.send(block[:min(left, CHUNK)])
                assert sock.recv(16).startswith(b"OK")
            else:
                got = 0
                while got < size:
                    n = sock.recv_into(buf)
                    if not n:
                        raise OSError(f"stream ended after {got} of {size} bytes")
                    got += n
        rates.append(size / (time.perf_counter() - t0) / 1e6)
    return {"mbps": rates, "bytes": size * repeat}


def latency(host: str, port: int, count: int) -> dict[str, Any]:
    payload = b"x" * 100
    samples = []
    with _command(host, port, "ECHO") as sock:
        for i in range(count + 20):
            t0 = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < len(payload):
                n = len(sock.recv(4096))
                if not n:
                    raise OSError("echo connection closed")
                got += n
            if i >= 20:  # the first ones warm up
                samples.append(time.perf_counter() - t0)
    return percentiles(samples)


class _Stop(Exception):
    """SIGTERM arrived."""


def _stop(_signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop


def stream(host: str, port: int) -> None:
    """Download until SIGTERM; then print the bytes and seconds (a stream that ended by
    itself prints ``ended`` and exits 1)."""
    buf = memoryview(bytearray(CHUNK))
    total, ended = 0, False
    signal.signal(signal.SIGTERM, _stop)
    t0 = time.perf_counter()
    try:
        with _command(host, port, "STREAM") as sock:
            print(json.dumps({"streaming": True}), flush=True)
            while n := sock.recv_into(buf):
                total += n
            ended = True
    except _Stop:
        pass
    except OSError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        ended = True
    seconds = time.perf_counter() - t0
    print(json.dumps({"bytes": total, "seconds": seconds, "ended": ended}), flush=True)
    sys.exit(1 if ended else 0)


def sequential(url: str, token: str, count: int) -> dict[str, Any]:
    """COUNT GETs, each on a new connection; a failed one counts as an error (and its time
    still counts: the caller must treat errors > 0 as a failed measurement)."""
    buf = memoryview(bytearray(65536))
    samples: list[float] = []
    errors: list[str] = []
    t_start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            if _get(url, token, buf) == 0:
                errors.append("empty body")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        samples.append(time.perf_counter() - t0)
    return {"total_s": time.perf_counter() - t_start, "errors": len(errors),
            "error_samples": errors[:3], **percentiles(samples)}


def check_response(data: bytes, expected: int | None = None) -> str | None:
    """What is wrong with a raw HTTP/1.x response (None: status 200, and a body of exactly
    Content-Length bytes, which is ``expected`` when given)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return f"no complete header in {len(data)} bytes"
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or status[1] != "200":
        return f"status line {lines[0]!r}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "content-length" not in headers:
        return "no Content-Length"
    length = int(headers["content-length"])
    if len(body) != length:
        return f"body of {len(body)} bytes, Content-Length {length}"
    if expected is not None and length != expected:
        return f"Content-Length {length}, expected {expected}"
    return None


def concurrent(url: str, token: str, count: int, expected: int | None = None) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    path = parts.path
    request = (f"GET {path} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
               f"Authorization: token {token}\r\n"
               "Connection: close\r\n\r\n").encode()
    start = threading.Barrier(count + 1)
    connects: list[float] = []
    totals: list[float] = []
    errors: list[str] = []

    def one() -> None:
        start.wait()
        t0 = time.perf_counter()
        try:
            with socket.create_connection(address, timeout=60) as sock:
                connects.append(time.perf_counter() - t0)
                sock.sendall(request)
                parts = []
                while chunk := sock.recv(CHUNK):
                    parts.append(chunk)
                problem = check_response(b"".join(parts), expected)
                if problem is not None:
                    errors.append(problem)
        except OSError as exc:
            errors.append(str(exc))
        totals.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - t0, "errors": len(errors),
            "error_samples": errors[:3],
            "slowest_connect_ms": max(connects, default=0) * 1e3,
            "slowest_fetch_ms": max(totals, default=0) * 1e3,
            "median_fetch_ms": statistics.median(totals) * 1e3 if totals else 0}


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "download":
        out = download(args[0], args[1], int(args[2]))
    elif cmd in ("up", "down"):
        out = transfer(cmd, args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "latency":
        out = latency(args[0], int(args[1]), int(args[2]))
    elif cmd == "stream":
        stream(args[0], int(args[1]))
        return
    elif cmd == "sequential":
        out = sequential(args[0], args[1], int(args[2]))
    elif cmd == "concurrent":
        out = concurrent(args[0], args[1], int(args[2]), int(args[3]) if len(args) > 3 else None)
    else:
        sys.exit(f"unknown command {cmd!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
