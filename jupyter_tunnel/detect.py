"""Find the Jupyter servers running on the last hop, and check one through the tunnel.

Discovery reads the runtime ``jpserver-<pid>.json`` files over an SSH exec
channel, so it works when ``jupyter`` is not on the PATH of a non-interactive
session (an environment that is not activated).  The remote commands are fixed
text; nothing from input is ever put into them.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import RemoteJupyterNotFound, RemoteJupyterNotReady
from .spec import check_base_url

MARK = "@@jupyter_tunnel@@"

#: the only command line sent to the remote; the scripts below go on its stdin, so they run
#: in a POSIX shell whatever the login shell is (csh and fish included)
REMOTE_SHELL = "sh -s"

# For every jpserver file: a marker line "MARK <ours 0|1> <mtime> <path>", then the file.
# A server counts only if its pid runs as this user and is a jupyter process: a stale file
# whose pid was reused must never receive the token.
DISCOVER_SCRIPT = r"""
found=0
me=$(id -un)
ours() {
  if [ -d "/proc/$1" ]; then
    [ -O "/proc/$1" ] && tr '\000' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q jupyter
  else
    case "$(ps -o user= -o command= -p "$1" 2>/dev/null)" in
      "$me "*jupyter*) return 0;; *) return 1;;
    esac
  fi
}
show() {
  for f in "$1"/jpserver-*.json; do
    [ -f "$f" ] || continue
    found=1
    p=${f##*/jpserver-}; p=${p%.json}
    case "$p" in *[!0-9]*|'') continue;; esac
    if ours "$p"; then a=1; else a=0; fi
    m=$(stat -c %Y "$f" 2>/dev/null || stat -f %m "$f" 2>/dev/null || echo 0)
    printf '\n%s %s %s %s\n' '@@jupyter_tunnel@@' "$a" "$m" "$f"
    cat "$f" 2>/dev/null
  done
}
seen=
for d in "${JUPYTER_RUNTIME_DIR:-}" "${XDG_DATA_HOME:-$HOME/.local/share}/jupyter/runtime" \
         "$HOME/Library/Jupyter/runtime"; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  case " $seen " in *" $d "*) continue;; esac
  seen="$seen $d"
  show "$d"
done
if [ "$found" = 0 ] && command -v jupyter >/dev/null 2>&1; then
  d=$(jupyter --runtime-dir 2>/dev/null) && [ -d "$d" ] && show "$d"
fi
exit 0
"""

# Starts JupyterLab (or a plain Jupyter server) in the background through the user's login
# shell, so that a profile which sets up conda or a venv applies.  The login shell is given
# only `sh '<file>'`, which every shell parses the same way.  $1, when given, is the base URL
# the server is to have (checked again here: only a path of safe characters); it reaches
# jupyter through the environment and one quoted argument, never through a parsed string.
LAUNCH_SCRIPT = r"""
base="${1:-}"
case "$base" in
  '') ;;
  /*/) case "$base" in *[!A-Za-z0-9._~/-]*|*//*)
         echo "cannot launch: invalid base URL" >&2; exit 2;; esac ;;
  *) echo "cannot launch: invalid base URL" >&2; exit 2;;
esac
log="${XDG_CACHE_HOME:-$HOME/.cache}/jupyter_tunnel"
mkdir -p "$log" && chmod 700 "$log" || exit 1
case "$log" in *"'"*) echo "cannot launch: the path $log contains a quote" >&2; exit 1;; esac
cat > "$log/launch.sh" <<'JT_EOF'
cd "$HOME" || exit 1
if ! command -v jupyter >/dev/null 2>&1; then
  echo "jupyter is not on the PATH of your login shell" >&2; exit 127
fi
app=lab; command -v jupyter-lab >/dev/null 2>&1 || app=server
if [ -n "${JT_BASE_URL:-}" ]; then
  nohup jupyter "$app" --no-browser --ip=127.0.0.1 "--ServerApp.base_url=$JT_BASE_URL" \
    </dev/null >"$JT_LOG" 2>&1 &
else
  nohup jupyter "$app" --no-browser --ip=127.0.0.1 </dev/null >"$JT_LOG" 2>&1 &
fi
echo "started $!"
JT_EOF
JT_BASE_URL="$base" JT_LOG="$log/launch.log" exec "${SHELL:-/bin/sh}" -lc "sh '$log/launch.sh'" \
  </dev/null
"""


@dataclass(frozen=True)
class RemoteServer:
    """One Jupyter server found on the remote host."""

    port: int
    pid: int
    alive: bool
    mtime: float
    base_url: str = "/"
    hostname: str = "localhost"
    secure: bool = False
    root_dir: str = ""
    version: str = ""
    password: bool = False
    token: str = field(default="", repr=False)
    file: str = ""

    @property
    def forward_host(self) -> str:
        """The address to forward to, as the remote host sees it."""
        if self.hostname in ("", "0.0.0.0", "*", "localhost", "127.0.0.1"):
            return "127.0.0.1"
        if self.hostname in ("::", "::1"):
            return "::1"
        return self.hostname


# Exit 0 while the launched server (pid $1) runs; else print the end of its log and exit 1.
LAUNCH_CHECK_SCRIPT = r"""
kill -0 "$1" 2>/dev/null && exit 0
tail -n 8 "${XDG_CACHE_HOME:-$HOME/.cache}/jupyter_tunnel/launch.log" >&2 2>/dev/null
exit 1
"""

#: runs a script (on stdin of ``sh -s``) with arguments on the last hop
RunScript = Callable[..., tuple[int, str, str]]


def _redact(text: str) -> str:
    """Hide tokens that a server log may show (``…?token=abc``)."""
    return re.sub(r"(token=)[^\s&]+", r"\1…", text)


def _last_line(err: str, status: int) -> str:
    lines = [line for line in _redact(err).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {status}"


def discover(run: RunScript, host: str) -> list[RemoteServer]:
    """The Jupyter servers whose runtime files the last hop has."""
    status, out, err = run(DISCOVER_SCRIPT)
    if status != 0:
        raise RemoteJupyterNotFound(
            f"could not look for Jupyter servers on {host}: 'sh' failed there "
            f"({_last_line(err, status)})", hop=host)
    return parse_discovery(out)


def find_server(run: RunScript, host: str, remote_port: int | None, *, launch: bool,
                launch_timeout: float, on_launch: Callable[[], None] | None = None,
                base_url: str | None = None) -> RemoteServer:
    """The server to forward to; with ``launch``, start one when none runs.

    With ``base_url``: a live server with that base URL first; else, with ``launch``, a new
    one started with it (even if others run); else the usual choice.
    """
    servers = discover(run, host)
    if base_url is not None:
        check_base_url(base_url)
        matching = [s for s in servers if s.alive and s.base_url == base_url
                    and (remote_port is None or s.port == remote_port)]
        if matching:
            return max(matching, key=lambda s: (s.mtime, s.pid))
        if launch:
            return _launch(run, host, servers, None, launch_timeout, on_launch, base_url)
    try:
        return choose(servers, host, remote_port)
    except RemoteJupyterNotFound:
        if not launch or any(s.alive for s in servers):
            raise
    return _launch(run, host, servers, remote_port, launch_timeout, on_launch, None)


def _launch(run: RunScript, host: str, servers: list[RemoteServer], remote_port: int | None,
            launch_timeout: float, on_launch: Callable[[], None] | None,
            base_url: str | None) -> RemoteServer:
    """Start JupyterLab on the last hop (with ``base_url`` if given) and wait for it."""
    known = {s.pid for s in servers if s.alive}
    status, out, err = run(LAUNCH_SCRIPT, *([base_url] if base_url else []))
    started = re.search(r"^started (\d+)$", out, re.MULTILINE)
    if status != 0 or not started:
        raise RemoteJupyterNotFound(
            f"could not start JupyterLab on {host}: {_last_line(err, status)}. Install it "
            "there, or make your login shell's profile put it on the PATH", hop=host)
    if on_launch:
        on_launch()
    deadline = time.monotonic() + launch_timeout
    while time.monotonic() < deadline:
        fresh = [s for s in discover(run, host) if s.alive and s.pid not in known
                 and (base_url is None or s.base_url == base_url)]
        if fresh and (remote_port is None or any(s.port == remote_port for s in fresh)):
            return choose(fresh, host, remote_port)
        status, _, err = run(LAUNCH_CHECK_SCRIPT, started.group(1))
        if status != 0:
            raise RemoteJupyterNotFound(
                f"JupyterLab started on {host} but exited at once: {_last_line(err, status)} "
                "(see ~/.cache/jupyter_tunnel/launch.log there)", hop=host)
        time.sleep(0.5)
    raise RemoteJupyterNotFound(
        f"JupyterLab was started on {host} but did not come up within {launch_timeout:g} s; "
        "see ~/.cache/jupyter_tunnel/launch.log there", hop=host)


def parse_discovery(output: str) -> list[RemoteServer]:
    """Parse what :func:`discover_command` printed."""
    servers: list[RemoteServer] = []
    chunks = output.split("\n" + MARK + " ")
    for chunk in chunks[1:]:
        header, _, body = chunk.partition("\n")
        parts = header.split(" ", 2)
        if len(parts) != 3:
            continue
        alive, mtime, path = parts
        try:
            info = json.loads(body)
        except ValueError:
            continue
        if not isinstance(info, dict):
            continue
        try:
            port = int(info.get("port") or 0)
            pid = int(info.get("pid") or 0)
        except (TypeError, ValueError):
            continue
        if port <= 0 or info.get("sock"):
            continue  # a server on a UNIX socket cannot be forwarded as TCP here
        base_url = str(info.get("base_url") or "/")
        if not base_url.endswith("/"):
            base_url += "/"
        if not base_url.startswith("/"):
            base_url = "/" + base_url
        servers.append(RemoteServer(
            port=port, pid=pid, alive=alive == "1",
            mtime=float(mtime) if mtime.replace(".", "", 1).isdigit() else 0.0,
            base_url=base_url, hostname=str(info.get("hostname") or "localhost"),
            secure=bool(info.get("secure")), root_dir=str(info.get("root_dir") or ""),
            version=str(info.get("version") or ""), password=bool(info.get("password")),
            token=str(info.get("token") or ""), file=path,
        ))
    return servers


def choose(servers: list[RemoteServer], host: str, remote_port: int | None,
           base_url: str | None = None) -> RemoteServer:
    """The newest live server, or the one on ``remote_port``; else a clear error.  With
    ``base_url``, only servers with that base URL count when any has it."""
    live = [s for s in servers if s.alive]
    if base_url is not None and any(s.base_url == base_url for s in live):
        live = [s for s in live if s.base_url == base_url]
    if remote_port is not None:
        for server in sorted(live, key=lambda s: s.mtime, reverse=True):
            if server.port == remote_port:
                return server
        ports = ", ".join(str(s.port) for s in live) or "none"
        raise RemoteJupyterNotFound(
            f"no running Jupyter server on {host} listens on port {remote_port} (running: "
            f"{ports}). Leave out --remote-port to use the newest one", hop=host)
    if not live:
        stale = len(servers)
        note = f" ({stale} stale runtime file(s) of stopped servers were ignored)" if stale else ""
        raise RemoteJupyterNotFound(
            f"no running Jupyter server found on {host}{note}. Start one there "
            "(jupyter lab --no-browser), or use --launch to have jupyter_tunnel start it", hop=host)
    return max(live, key=lambda s: (s.mtime, s.pid))


def local_url(server: RemoteServer, local_port: int, *, with_token: bool = True) -> str:
    """The URL that opens the remote JupyterLab through the tunnel."""
    scheme = "https" if server.secure else "http"
    url = f"{scheme}://127.0.0.1:{local_port}{server.base_url}lab"
    if with_token and server.token:
        url += "?token=" + server.token
    return url


def status_once(server: RemoteServer, local_port: int, timeout: float) -> int:
    """``GET {base_url}api/status`` through the tunnel; the HTTP status (0: no answer)."""
    conn: http.client.HTTPConnection
    if server.secure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the certificate names the remote host, not 127.0.0.1
        conn = http.client.HTTPSConnection("127.0.0.1", local_port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", local_port, timeout=timeout)
    headers = {"Authorization": f"token {server.token}"} if server.token else {}
    path = f"{server.base_url}api/status" if server.token or not server.password else \
        f"{server.base_url}login"
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def wait_ready(server: RemoteServer, local_port: int, host: str, timeout: float,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll ``api/status`` until it answers 200; raise a clear error after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    status = 0
    while True:
        status = status_once(server, local_port, min(5.0, timeout))
        if status == 200:
            return
        if status in (401, 403):
            raise RemoteJupyterNotReady(
                f"the Jupyter server on {host} (port {server.port}) refused its own token "
                f"(HTTP {status}); it may have restarted: try again", hop=host)
        if time.monotonic() + delay > deadline:
            break
        sleep(delay)
        delay = min(delay * 2, 0.5)
    what = f"HTTP {status}" if status else "no answer"
    raise RemoteJupyterNotReady(
        f"the Jupyter server on {host} (port {server.port}) did not answer api/status through "
        f"the tunnel within {timeout:g} s ({what})", hop=host)
