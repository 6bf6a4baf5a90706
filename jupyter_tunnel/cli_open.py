"""`jupyter tunnel open` and `jupyter tunnel demo`: the commands that hold a tunnel open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from traitlets import Bool, List, Unicode

from .cli_answer import Relayed, answer_for_child
from .cli_base import BaseTunnelApp, common_flags
from .errors import TunnelError
from .login.questions import Ask
from .login.terminal import TerminalAsk, terminal_usable
from .manager import TunnelManager
from .spec import build_spec
from .state import State
from .tunnel import Tunnel


def _progress(app: BaseTunnelApp) -> Any:
    """Progress lines on stderr: hops while connecting, then what happens to the tunnel."""
    previous = [State.CONNECTING]

    def on_event(tunnel: Tunnel, event: str) -> None:
        state = tunnel.state
        if event == "hop":
            hop = tunnel.chain[tunnel.hop_index]
            n = len(tunnel.chain)
            app.say(f"  [{tunnel.hop_index + 1}/{n}] connecting to {hop.label} as {hop.user}")
        elif event == "notice":
            app.say(f"  {tunnel.notices[-1]}")
        elif event == "launch":
            app.say(f"  starting JupyterLab on {tunnel.chain[-1].alias}")
        elif event == "state":
            was, previous[0] = previous[0], state
            if state is State.DETECTING:
                app.say(f"  looking for a running Jupyter server on {tunnel.chain[-1].alias}")
            elif state is State.RECONNECTING:
                if was is not State.RECONNECTING:
                    app.say(f"Connection lost: {tunnel.problem}. Reconnecting on the same port...")
                elif tunnel.next_try:
                    wait = max(0.0, tunnel.next_try - time.time())
                    app.say(f"  attempt {tunnel.attempt} failed: {tunnel.problem}; next in "
                            f"{wait:.1f} s")
            elif state is State.DEGRADED:
                app.say(f"Degraded: SSH is up but {tunnel.problem}")
            elif state is State.READY and was in (State.RECONNECTING, State.DEGRADED):
                app.say(f"Ready again on 127.0.0.1:{tunnel.local_port or '-'} "
                        f"(reconnects so far: {tunnel.reconnects})")
    return on_event


def _ready_lines(info: dict[str, Any]) -> list[str]:
    """What stdout shows of a ready tunnel: its URL, or its forwards with --no-jupyter."""
    if info.get("url"):
        return [info["url"]]
    return [f"{f['type']} {f['listen']} -> {f['to']}" for f in info.get("forwards") or []]


class OpenApp(BaseTunnelApp):
    """jupyter tunnel open."""

    name = "jupyter-tunnel-open"
    description = """Open a tunnel to the JupyterLab running on TARGET, through jump hosts.

    TARGET is an ssh-config alias, user@host or user@host:port. Jump hosts are given with
    --via (repeatable, or comma separated as with ssh -J, first hop first) or as a phrase:
    `jupyter tunnel open beast via unicorn`. The tunnel is ready once the remote Jupyter
    answers through it; its URL is printed, and it stays open until Ctrl-C (or, with
    --detach, until `jupyter tunnel close NAME`)."""
    examples = """
jupyter tunnel open beast --via unicorn
jupyter tunnel open alice@beast.example.org:2222 --via gate,unicorn --local-port 9999
jupyter tunnel open beast via unicorn --detach --json
"""
    aliases = {
        **BaseTunnelApp.aliases,
        "via": "OpenApp.via",
        "name": "OpenApp.tunnel_name",
        "local-port": "OpenApp.local_port",
        "remote-port": "OpenApp.remote_port",
        "forward": "OpenApp.forward",
        "reverse": "OpenApp.reverse",
        "backend": "TunnelManager.backend",
    }
    flags = {
        **common_flags,
        "launch": ({"OpenApp": {"launch": True}},
                   "Start JupyterLab on the target (through your login shell) if none runs."),
        "detach": ({"OpenApp": {"detach": True}},
                   "Return once ready and keep the tunnel open in a background process."),
        "no-jupyter": ({"OpenApp": {"jupyter": False}},
                       "Forward only what --forward and --reverse ask for; look for no Jupyter."),
        "resume": ({"TunnelManager": {"resume": True}},
                   "Connections through the tunnel resume after an outage, nothing lost (a "
                   "helper runs on the target). The default."),
        "no-resume": ({"TunnelManager": {"resume": False}},
                      "Connections through the tunnel end with the SSH connection (a reset)."),
    }
    via = List(Unicode(), help="Jump hosts, first hop first (repeatable or comma separated).")\
        .tag(config=True)
    tunnel_name = Unicode("", help="Name of the tunnel (default: the target's name).")\
        .tag(config=True)
    local_port = Unicode("", help="Local port to listen on (default: a free one).")\
        .tag(config=True)
    remote_port = Unicode("", help="Port of the remote Jupyter, when several run.")\
        .tag(config=True)
    forward = List(Unicode(), help="Extra local forward PORT:HOST:HOSTPORT, as ssh -L (HOST as "
                   "the target sees it; listens on 127.0.0.1). Repeatable.").tag(config=True)
    reverse = List(Unicode(), help="Reverse forward [BIND:]PORT:HOST:HOSTPORT, as ssh -R: the "
                   "target listens on PORT (on its 127.0.0.1 unless BIND is given) and its "
                   "connections reach HOST:HOSTPORT as this machine sees it. Repeatable.")\
        .tag(config=True)
    jupyter = Bool(True, help="Find the remote Jupyter and forward to it.").tag(config=True)
    launch = Bool(False, help="Start JupyterLab on the target if none runs.").tag(config=True)
    detach = Bool(False, help="Keep the tunnel in a background process.").tag(config=True)
    detached_child = Bool(False, help="(internal) run as the background process of --detach")\
        .tag(config=True)
    child_progress = Bool(False, help="(internal) show progress although --json is set")\
        .tag(config=True)

    def start(self) -> None:
        try:
            spec = build_spec(
                [str(a) for a in self.extra_args],
                self.via, name=self.tunnel_name or None, local_port=self.local_port,
                remote_port=self.remote_port, launch=self.launch, forwards=self.forward,
                reverse=self.reverse, jupyter=self.jupyter,
            )
        except TunnelError as exc:
            self.fail(exc)
        _interrupt_on_term()
        if self.detach and not self.detached_child:
            self._spawn_detached()
            return
        manager = self.manager()
        try:
            manager.cleanup()  # what crashed tunnels left must not block names or ports
        except TunnelError as exc:
            self.fail(exc)
        t0 = time.monotonic()
        tunnel: Tunnel | None = None
        try:
            ask = self._ask(manager)
            tunnel = manager.prepare(spec, _progress(self), ask)
            if isinstance(ask, Relayed):
                ask.name = _name_of(tunnel)
            self.say(f"Opening tunnel {tunnel.name}: {' -> '.join(tunnel.hops)}")
            manager.start(tunnel)
        except TunnelError as exc:
            self.fail(exc)
        except KeyboardInterrupt:
            _quiet_signals()
            if tunnel is not None:
                tunnel.close()
            self.interrupted()
            self.quit(130)
        try:  # ready: Ctrl-C from here on (even before the wait) is a normal close
            info = tunnel.to_dict()
            what = (f"{tunnel.chain[-1].alias}'s Jupyter (port {info['remote_port']}) on "
                    f"127.0.0.1:{info['local_port']}" if tunnel.spec.jupyter else
                    f"{len(info['forwards'])} forward(s) through {tunnel.chain[-1].alias}")
            self.report_ready(info, f"Ready in {time.monotonic() - t0:.2f} s: {what}")
            if self.detached_child:
                _go_quiet()
            else:
                self.say("Press Ctrl-C to close the tunnel.")
            failed = _wait(tunnel)
        except KeyboardInterrupt:
            _quiet_signals()
            failed = False
        if not (failed and self.detached_child):  # no one reads a detached process's stderr:
            tunnel.close()                        # its record keeps saying why it failed
        if failed:
            self.say(f"Tunnel {tunnel.name} failed: {tunnel.loss_reason()}")
            self.quit(1)
        self.say(f"Tunnel {tunnel.name} closed.")

    def _ask(self, manager: TunnelManager) -> Ask | None:
        """Who answers the hops' questions: the terminal in the foreground; none with
        --json or without a terminal (AnswerNeeded says how to answer); for the background
        process of --detach, the terminal that started it (or ``jupyter tunnel answer``)."""
        if self.detached_child:
            return Relayed(manager.answer_timeout + 5)
        if self.json_output or not terminal_usable():
            return None
        return TerminalAsk(manager.answer_timeout)

    def interrupted(self) -> None:
        """Say that Ctrl-C or SIGTERM stopped the open (as JSON too, with --json)."""
        self.say("interrupted: nothing left open")
        if self.json_output and not self.detached_child:
            print(json.dumps({"error": "interrupted: nothing left open", "kind": "interrupted",
                              "hop": None}), flush=True)

    def say(self, text: str) -> None:
        """Progress on stderr; the background process of --detach speaks for its parent."""
        if not self.json_output or self.child_progress:
            print(text, file=sys.stderr, flush=True)

    def _spawn_detached(self) -> None:
        argv = [sys.executable, "-m", "jupyter_tunnel", "open", *self.argv_for_child()]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 start_new_session=True, text=True)
        assert child.stdout is not None
        can_ask = not self.json_output and terminal_usable()
        try:
            while True:  # its questions, until the line that says how the open ended
                line = child.stdout.readline()
                asked = _json_object(line)
                if asked is None or "prompt" not in asked or "state" in asked:
                    break
                answer_for_child(self.manager(), asked, can_ask)
        except KeyboardInterrupt:
            _quiet_signals()
            child.terminate()  # the child closes what it opened and exits
            child.wait()
            self.interrupted()
            self.quit(130)
        child.stdout.close()
        try:
            info = json.loads(line) if line.strip() else None
        except ValueError:
            info = None
        if not isinstance(info, dict) or "state" not in info:
            code = child.wait()
            if isinstance(info, dict) and info.get("error"):
                self.quit_with(info, code or 1)
            self.fail(TunnelError(f"the background tunnel process exited with status {code}"))
        self.report_ready(info, f"Tunnel {info['name']} ready in the background (pid "
                                f"{child.pid}); close it with: jupyter tunnel close {info['name']}")

    def report_ready(self, info: dict[str, Any], message: str) -> None:
        """The ready tunnel: its JSON with --json, else ``message`` and the URL on stdout."""
        if self.json_output:
            print(json.dumps(info), flush=True)
        else:
            self.say(message)
            for line in _ready_lines(info):
                print(line, flush=True)

    def quit_with(self, error: dict[str, Any], code: int) -> NoReturn:
        """Pass on the background process's error as it reported it, and its exit status."""
        if self.json_output:
            print(json.dumps(error), flush=True)
        else:
            print(f"jupyter tunnel: error: {error['error']}", file=sys.stderr, flush=True)
        self.quit(code)

    def argv_for_child(self) -> list[str]:
        """This command line, for the background process (no secrets: none are in argv)."""
        args = [a for a in self.argv
                if a not in ("--detach", "--OpenApp.detach=True", "--json")]
        extra = ["--json", "--OpenApp.detached_child=True"]
        if not self.json_output:
            extra.append("--OpenApp.child_progress=True")
        if "--" in args:
            i = args.index("--")
            return [*args[:i], *extra, *args[i:]]
        return [*args, *extra]


def _name_of(tunnel: Tunnel) -> Callable[[], str]:
    return lambda: tunnel.name


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _interrupt_on_term() -> None:
    """SIGTERM and SIGHUP close the tunnel as Ctrl-C does, also in the middle of an open."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def _quiet_signals() -> None:
    """Let a close run to its end: a second Ctrl-C must not leave half of it behind."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _wait(tunnel: Tunnel) -> bool:
    """Wait for Ctrl-C, SIGTERM or the tunnel's failure (it reconnects by itself until then);
    True if it failed."""
    try:
        while not tunnel.wait(0.5):
            pass
    except KeyboardInterrupt:
        _quiet_signals()
        return False
    _quiet_signals()
    return tunnel.state is State.FAILED


def _go_quiet() -> None:
    """Detach stdio from the parent once ready, so its pipe can close."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


class DemoApp(BaseTunnelApp):
    """jupyter tunnel demo."""

    name = "jupyter-tunnel-demo"
    description = """Start a throwaway SSH network on this machine (a jump host 'unicorn' and a
    host 'beast' running Jupyter, in network namespaces when run as root) and open
    'beast via unicorn' through it. Ctrl-C removes everything it made."""

    def start(self) -> None:
        from .sandbox import Sandbox, SandboxError

        _interrupt_on_term()
        sandbox = Sandbox(log=self.say)
        interrupted = False
        manager: TunnelManager | None = None
        ready = False
        try:
            try:
                self.say("Starting the demo network (unicorn, beast and a Jupyter server)...")
                sandbox.start()
            except SandboxError as exc:
                self.fail(TunnelError(str(exc)))
            self.say(f"  ssh config: {sandbox.ssh_config}")
            manager = TunnelManager(parent=self, owner="cli", ssh_config=str(sandbox.ssh_config))
            try:
                tunnel = manager.open(build_spec("beast", ["unicorn"], name=None),
                                      _progress(self))
            except TunnelError as exc:
                self.fail(exc)
            ready = True  # Ctrl-C from here on is the normal way out (exit 0)
            info = tunnel.to_dict()
            if self.json_output:
                print(json.dumps(info), flush=True)
            else:
                self.say(f"Tunnel {tunnel.name} ready: beast via unicorn on "
                         f"127.0.0.1:{tunnel.local_port}")
                print(info["url"], flush=True)
                self.say("Try it from another shell with: "
                         f"jupyter tunnel open beast --via unicorn --ssh-config "
                         f"{sandbox.ssh_config}")
                self.say("Press Ctrl-C to close the tunnel and remove the demo network.")
            _wait(tunnel)
        except KeyboardInterrupt:
            interrupted = not ready
        finally:
            _quiet_signals()
            if manager is not None:
                manager.close_all()
            sandbox.stop()
            self.say("Demo network removed.")
        if interrupted:
            self.quit(130)
