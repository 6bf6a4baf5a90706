"""A real JupyterHub on this machine for the tests: two local users and a browser elsewhere.

- Users ``{prefix}alice`` and ``{prefix}bob`` (useradd, removed after), each with a 0700
  home in the hub's folder holding ``~/.ssh``: a copy of the sandbox's key, its config and
  known hosts, so each reaches beast via unicorn with their own files.
- ``jupyterhub`` (PyPI) with ``configurable-http-proxy`` (npm; ``.ci/setup`` puts it in
  ``.venv/hub-proxy``), the dummy authenticator with a shared password, and the default
  LocalProcessSpawner running this venv's ``jupyterhub-singleuser`` as each user: the same
  deployment as the README's recipe.
- The proxy listens only on a veth into a network namespace ``{prefix}-desk``, where the
  browser runs (chromium under ``ip netns exec``): from there 127.0.0.1 of the hub's machine
  is out of reach, as from a browser on another machine.
- The hub and all it starts run in a private mount namespace where the users can pass the
  folders on the way to this venv, its Python and the hub's folder (``hub_expose.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jupyter_tunnel
from jupyter_tunnel.sandbox import Sandbox

HERE = Path(__file__).resolve().parent
VENV = Path(sys.prefix)
PROXY = VENV / "hub-proxy" / "node_modules" / ".bin" / "configurable-http-proxy"
SINGLEUSER = VENV / "bin" / "jupyterhub-singleuser"
MARK = "jupyter_tunnel test user"


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("check", True)
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HubUser:
    name: str
    home: Path
    uid: int = 0
    api_token: str = field(default="", repr=False)  # a hub token of this user's own


class Hub:
    """Start with :meth:`start`, end with :meth:`stop` (or use as a context manager)."""

    def __init__(self, net: Sandbox) -> None:
        self.net = net
        self.prefix = net.prefix
        self.password = secrets.token_hex(8)
        self.admin_token = secrets.token_hex(16)
        self.dir = Path()
        self.users: dict[str, HubUser] = {}
        self.desk = f"{self.prefix}-desk"
        self.address = ""  # the proxy's address, as the desk sees it
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._made_users: list[str] = []
        self._made_ns = False
        self._link = f"{self.prefix}-rd"
        self._made_link = False

    # lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Hub:
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-hub-")).resolve()
            self.dir.chmod(0o755)
            for who in ("alice", "bob"):
                self._add_user(who)
            self._make_desk()
            self._write_config()
            self._start_hub()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the hub (and with it the users' servers), remove the users, the desk and the
        hub's folder; safe to call twice."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        for name in self._made_users:
            # whatever a user's server left (it should leave nothing; the test checks)
            subprocess.run(["pkill", "-KILL", "-U", name], capture_output=True)
        for name in self._made_users:
            for _ in range(50):
                if _run(["userdel", name], check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self._made_users = []
        if self._made_link:
            subprocess.run(["ip", "link", "del", self._link], capture_output=True)
            self._made_link = False
        if self._made_ns:
            subprocess.run(["ip", "netns", "del", self.desk], capture_output=True)
            self._made_ns = False
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # building ----------------------------------------------------------------------
    def _add_user(self, who: str) -> None:
        name = f"{self.prefix}{who}"
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            raise RuntimeError(f"user {name} exists already ({entry.pw_gecos}): remove it "
                               f"with userdel {name}")
        home = self.dir / f"home-{who}"
        for _ in range(50):  # useradd fails while another process holds the passwd lock
            res = _run(["useradd", "-M", "-U", "-s", "/bin/sh", "-c", MARK, "-d", str(home),
                        name], check=False)
            if res.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"useradd {name}: {res.stderr.strip()}")
        self._made_users.append(name)
        entry = pwd.getpwnam(name)
        user = HubUser(name, home, entry.pw_uid)
        ssh = home / ".ssh"
        ssh.mkdir(parents=True)
        key = ssh / "id_ed25519"
        shutil.copy(self.net.key, key)
        shutil.copy(self.net.known_hosts, ssh / "known_hosts")
        config = self.net.ssh_config.read_text()
        config = config.replace(f"IdentityFile {self.net.key}\n", f"IdentityFile {key}\n")
        config = config.replace(str(self.net.known_hosts), str(ssh / "known_hosts"))
        (ssh / "config").write_text(config)
        for path in [home, ssh, *ssh.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        home.chmod(0o700)
        ssh.chmod(0o700)
        key.chmod(0o600)
        self.users[who] = user

    def _make_desk(self) -> None:
        """A namespace for the browser, joined to this one by a /30 in the sandbox range."""
        used = _run(["ip", "-4", "-o", "addr", "show"]).stdout + _run(["ip", "-4", "route"]).stdout
        taken = {(int(x), int(y) // 4) for x, y in re.findall(r"10\.213\.(\d+)\.(\d+)", used)}
        free = [(x, k) for x in range(128) for k in range(64) if (x, k) not in taken]
        x, k = secrets.choice(free)
        near, far = f"10.213.{x}.{4 * k + 1}", f"10.213.{x}.{4 * k + 2}"
        _run(["ip", "netns", "add", self.desk])
        self._made_ns = True
        _run(["ip", "-n", self.desk, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", self._link, "type", "veth", "peer", "name",
              f"{self.prefix}-dr", "netns", self.desk])
        self._made_link = True
        _run(["ip", "addr", "add", f"{near}/30", "dev", self._link])
        _run(["ip", "link", "set", self._link, "up"])
        _run(["ip", "-n", self.desk, "addr", "add", f"{far}/30", "dev", f"{self.prefix}-dr"])
        _run(["ip", "-n", self.desk, "link", "set", f"{self.prefix}-dr", "up"])
        self.address = near

    def _write_config(self) -> None:
        self.port = _free_port()
        names = sorted(u.name for u in self.users.values())
        lines = [
            "c = get_config()  # noqa",
            f"c.JupyterHub.bind_url = 'http://{self.address}:{self.port}'",
            f"c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{_free_port()}'",
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{_free_port()}'",
            f"c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]",
            "c.JupyterHub.authenticator_class = 'dummy'",
            f"c.DummyAuthenticator.password = {self.password!r}",
            f"c.Authenticator.allowed_users = {set(names)!r}",
            "c.JupyterHub.spawner_class = 'localprocess'",
            f"c.Spawner.cmd = [{str(SINGLEUSER)!r}]",
            "c.Spawner.default_url = '/lab'",
            "c.Spawner.start_timeout = 120",
            "c.Spawner.http_timeout = 120",
            f"c.JupyterHub.db_url = 'sqlite:///{self.dir}/jupyterhub.sqlite'",
            f"c.JupyterHub.cookie_secret_file = '{self.dir}/cookie_secret'",
            f"c.JupyterHub.pid_file = '{self.dir}/jupyterhub.pid'",
            "c.JupyterHub.services = [{'name': 'jt-test', 'api_token': "
            f"{self.admin_token!r}}}]",
            "c.JupyterHub.load_roles = [{'name': 'jt-test', 'services': ['jt-test'], "
            "'scopes': ['admin:users', 'admin:servers', 'tokens', 'list:users']}]",
        ]
        (self.dir / "jupyterhub_config.py").write_text("\n".join(lines) + "\n")

    def _start_hub(self) -> None:
        if not PROXY.exists():
            raise RuntimeError(f"{PROXY} is missing: run .ci/setup (it installs "
                               "configurable-http-proxy with npm)")
        repo = Path(jupyter_tunnel.__file__).resolve().parents[1]
        paths = [Path(sys.base_prefix).resolve(), VENV.resolve(), repo, self.dir]
        save = self.dir / ".saved"
        env = {"PATH": f"{VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
               "HOME": str(self.dir), "LANG": "C.UTF-8"}
        log = (self.dir / "hub.log").open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable,
             str(HERE / "hub_expose.py"), str(save), *map(str, paths), "--",
             str(VENV / "bin" / "jupyterhub"), "-f", str(self.dir / "jupyterhub_config.py")],
            cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.api("GET", "users")
                return
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the hub did not come up:\n{self.log_tail()}") \
                        from None
                time.sleep(0.3)

    # using it ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def log_tail(self, chars: int = 6000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "hub.log").read_text(errors="replace")[-chars:]
        return ""

    def request(self, method: str, path: str, token: str, body: Any = None
                ) -> tuple[int, Any]:
        """``method`` on ``{hub url}/{path}`` with ``Authorization: token``: (status, JSON)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/{path}", data=data, method=method,
                                     headers={"Authorization": f"token {token}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             _NoRedirect())
        try:
            with opener.open(req, timeout=60) as response:
                status, raw = int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The hub's REST API as the test's admin service; raises on an error status."""
        status, data = self.request(method, f"hub/api/{path}", self.admin_token, body)
        if status >= 400:
            raise urllib.error.URLError(f"hub API {method} {path}: {status} {data}")
        return data

    def token_of(self, who: str) -> str:
        """A hub API token of the user (what their scripts would use)."""
        user = self.users[who]
        if not user.api_token:
            user.api_token = self.api("POST", f"users/{user.name}/tokens",
                                      {"note": "jupyter_tunnel test"})["token"]
        return user.api_token

    def server(self, who: str) -> dict[str, Any] | None:
        """The user's default server as the hub reports it (None when stopped)."""
        model = self.api("GET", f"users/{self.users[who].name}")
        server: dict[str, Any] | None = (model.get("servers") or {}).get("")
        return server if server and server.get("ready") else None

    def start_server(self, who: str, timeout: float = 120) -> None:
        name = self.users[who].name
        with contextlib.suppress(urllib.error.URLError):  # 400: it runs already
            self.api("POST", f"users/{name}/server")
        self._wait(lambda: self.server(who) is not None, timeout, f"{name}'s server to start")

    def stop_server(self, who: str, timeout: float = 90) -> None:
        name = self.users[who].name
        self.api("DELETE", f"users/{name}/server")
        self._wait(lambda: self.server(who) is None
                   and not self.api("GET", f"users/{name}").get("pending"),
                   timeout, f"{name}'s server to stop")

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g} s for {what}\n{self.log_tail()}")
            time.sleep(0.3)

    def as_user(self, who: str, argv: list[str], **kwargs: Any
                ) -> subprocess.CompletedProcess[str]:
        """Run argv as the user, where the hub's users run (its mount namespace), with a
        login's HOME and PATH."""
        assert self.proc is not None
        user = self.users[who]
        env = {"HOME": str(user.home), "USER": user.name, "LOGNAME": user.name,
               "PATH": f"{VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        kwargs.setdefault("timeout", 120)
        return _run(["nsenter", f"--mount=/proc/{self._hub_pid()}/ns/mnt", "setpriv",
                     f"--reuid={user.uid}", f"--regid={user.uid}", "--init-groups",
                     "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
                    check=False, cwd="/", **kwargs)

    def _hub_pid(self) -> int:
        """The hub's pid (the exposed namespace's first process after unshare's exec)."""
        assert self.proc is not None
        return self.proc.pid

    def processes_of(self, who: str) -> list[str]:
        """``pid command`` of every process the user runs."""
        out = _run(["ps", "-U", self.users[who].name, "-o", "pid=,args="], check=False).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def desk_chromium(self) -> Path:
        """A chromium that runs in the desk's namespace (for Playwright's executable_path)."""
        wrapper = self.dir / "chromium-at-the-desk"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {self.desk} /usr/bin/chromium "$@"\n')
        wrapper.chmod(0o755)
        return wrapper


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


@contextlib.contextmanager
def running_hub(net: Sandbox) -> Iterator[Hub]:
    with Hub(net) as hub:
        yield hub
