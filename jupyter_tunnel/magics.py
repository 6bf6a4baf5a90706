"""``%tunnel``: open, list, inspect and close tunnels from a notebook (IPython magics).

Loaded with ``%load_ext jupyter_tunnel``. The magics own a ``TunnelManager`` (owner "kernel")
configured from the shell, so ``ipython_config.py`` and ``%config TunnelManager.…`` apply.
Tunnels opened here close when the kernel shuts down or restarts; records left by processes
that died are cleaned up when the magics load.
"""

from __future__ import annotations

import atexit
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

from IPython.core import magic_arguments as _magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display as _display

from .api import make_spec
from .errors import ConfigError, SpecError, TunnelError, TunnelExists, TunnelNotFound
from .humanize import hub_note, under_hub
from .login.notebook import NotebookAsk
from .magics_kernels import run_kernels
from .manager import TunnelManager
from .spec import TunnelSpec, check_name
from .state import State
from .tunnel import Tunnel

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
# IPython's magic_arguments helpers carry no annotations: give them types here
magic_arguments: Callable[[], _Decorator] = _magic_arguments.magic_arguments
argument: Callable[..., _Decorator] = _magic_arguments.argument
parse_argstring: Callable[[Callable[..., Any], str], Any] = _magic_arguments.parse_argstring
display: Callable[[Any], None] = _display

COMMANDS = ("open", "list", "status", "close", "cleanup", "kernels")
#: errors in what the user asked for: shown as UsageError (one line, no traceback)
INPUT_ERRORS = (SpecError, ConfigError, TunnelNotFound, TunnelExists)
OPEN_OPTIONS = {"via", "name", "local_port", "remote_port", "ssh_config", "launch", "forward",
                "reverse", "no_jupyter"}
HINT = ("say which host runs Jupyter, e.g. %tunnel beast via unicorn; or use %tunnel list, "
        "%tunnel status NAME, %tunnel close NAME, %tunnel cleanup (%tunnel? shows every option)")


def _render_without_traceback(exc: TunnelError) -> TunnelError:
    """Make IPython show the engine's error as one line (it calls ``_render_traceback_``)."""
    line = f"\x1b[0;31m{type(exc).__name__}\x1b[0m: {exc.message}"
    setattr(exc, "_render_traceback_", lambda: [line])  # noqa: B010 - an instance hook
    return exc


def _unquote(value: str) -> str:
    """``'a b'`` or ``"a b"`` -> ``a b`` (a quoted magic argument, as a shell would read it)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _as_usage_error(exc: TunnelError) -> UsageError:
    return UsageError(exc.message)


def _shown_error(exc: TunnelError) -> Exception:
    """What the magic raises for an engine error: bad input as UsageError, the rest (a hop
    that cannot be reached, a refused key...) as itself, shown without a traceback."""
    return _as_usage_error(exc) if isinstance(exc, INPUT_ERRORS) else \
        _render_without_traceback(exc)


@magics_class
class TunnelMagics(Magics):
    """The ``%tunnel`` line magic and the kernel's tunnel manager."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.ip: Any = shell  # typed loosely: IPython's own annotations are partial
        self.manager = TunnelManager(parent=shell, owner="kernel")
        #: (execution count, tunnel) of the card shown last, so it is not shown twice
        self._shown: tuple[int, Tunnel] | None = None

    # lifecycle ------------------------------------------------------------------------
    @property
    def in_kernel(self) -> bool:
        """Whether a Jupyter frontend shows our output (widgets), not a terminal."""
        return getattr(self.ip, "kernel", None) is not None

    def install(self) -> None:
        """Hook into the shell: config, display of Tunnel objects, exit; clean up leftovers."""
        shell = self.ip
        shell.configurables.append(self.manager)
        if self.in_kernel:
            shell.display_formatter.ipython_display_formatter.for_type(
                Tunnel, self._display_tunnel)
        atexit.register(self.shutdown)
        self.cleanup(on_load=True)

    def uninstall(self) -> None:
        """Undo :meth:`install` and close the tunnels this kernel opened."""
        shell = self.ip
        atexit.unregister(self.shutdown)
        shell.display_formatter.ipython_display_formatter.pop(Tunnel, None)
        if self.manager in shell.configurables:
            shell.configurables.remove(self.manager)
        self.shutdown()

    def shutdown(self) -> None:
        """At exit (kernel shutdown or restart): close every tunnel this kernel opened."""
        widgets = sys.modules.get("jupyter_tunnel.widgets")
        if widgets is not None:
            widgets.stop_updates()  # the kernel's channels may already be closing
        self.manager.close_all()

    # the magic ------------------------------------------------------------------------
    @magic_arguments()
    @argument("words", nargs="*", metavar="WORDS",
              help="TARGET [via HOST ...] to open a tunnel (the word 'open' may come first); "
              "or: list | status NAME | close NAME... | cleanup")
    @argument("--via", action="append", metavar="HOST",
              help="Jump host, first hop first; repeatable or comma separated as with ssh -J.")
    @argument("--name", help="Name of the tunnel (default: the target's name).")
    @argument("--local-port", metavar="PORT", help="Local port to listen on (default: a free "
              "one).")
    @argument("--remote-port", metavar="PORT", help="Port of the remote Jupyter, when several "
              "run.")
    @argument("--ssh-config", metavar="FILE", help="OpenSSH client config to read (default: "
              "~/.ssh/config, or %%config TunnelManager.ssh_config).")
    @argument("--launch", action="store_true",
              help="Start JupyterLab on the target (through its login shell) if none runs.")
    @argument("--forward", action="append", metavar="PORT:HOST:HOSTPORT",
              help="Extra local forward, as ssh -L (HOST as the target sees it; listens on "
              "127.0.0.1). Repeatable.")
    @argument("--reverse", action="append", metavar="[BIND:]PORT:HOST:HOSTPORT",
              help="Reverse forward, as ssh -R: the target listens on PORT and its "
              "connections reach HOST:HOSTPORT as this machine sees it. Repeatable.")
    @argument("--no-jupyter", action="store_true",
              help="Forward only what --forward and --reverse ask for; look for no Jupyter.")
    @argument("--all", action="store_true",
              help="With close: close every tunnel this kernel opened; with kernels remove: "
              "remove every kernelspec jupyter tunnel installed.")
    @argument("--kernel", action="append", metavar="NAME",
              help="With kernels install: the remote kernel to install (default: all). "
              "Repeatable.")
    @argument("--cwd", metavar="DIR", help="With kernels install: the kernels' working folder "
              "on the target.")
    @line_magic
    def tunnel(self, line: str = "") -> Tunnel | None:
        """Reach the JupyterLab running on a remote host through SSH jump hosts.

        %tunnel beast via unicorn         open a tunnel (or reuse the live one) and show a
                                          live card: hops, state, link, traffic, buttons
        t = %tunnel beast --via unicorn   the same, keeping the Tunnel: t.url, t.state,
                                          t.close(); `with t:` closes it at the end
        %tunnel list                      all your tunnels, from every process (live table)
        %tunnel status NAME               one tunnel
        %tunnel close NAME | --all        close one tunnel, or every one this kernel opened
        %tunnel cleanup                   forget tunnels whose process died
        %tunnel kernels install beast via unicorn   beast's kernels in this Jupyter
                                          (also: kernels list TARGET, kernels remove
                                          NAME... | --all, kernels running)

        Hosts are ssh-config aliases, user@host or user@host:port. Tunnels opened here
        close when the kernel shuts down or restarts. From Python code use
        `jupyter_tunnel.open_tunnel`.
        """
        args = parse_argstring(self.tunnel, line)
        for key, value in vars(args).items():  # IPython's splitting keeps quotes: drop them
            if isinstance(value, str):
                setattr(args, key, _unquote(value))
            elif isinstance(value, list):
                setattr(args, key, [_unquote(str(v)) for v in value])
        words = [str(w) for w in args.words]
        command = "open"
        if words and words[0].lower() in COMMANDS:
            command, words = words[0].lower(), words[1:]
        if command == "kernels":
            run_kernels(self.manager, words, args)
            return None
        given = {k for k, v in vars(args).items() if k != "words" and v not in (None, False, [])}
        allowed = {"open": OPEN_OPTIONS, "close": {"all"}}.get(command, set())
        extra = sorted(given - allowed)
        if extra:
            options = ", ".join("--" + e.replace("_", "-") for e in extra)
            raise UsageError(f"{options} does not apply to %tunnel {command}")
        if command == "open":
            return self.open(words, args)
        if command == "list":
            self._no_words(command, words)
            self.show_list()
        elif command == "status":
            self.status(self._one_name(command, words))
        elif command == "close":
            self.close(words, close_all=args.all)
        else:
            self._no_words(command, words)
            self.cleanup()
        return None

    @staticmethod
    def _no_words(command: str, words: list[str]) -> None:
        if words:
            raise UsageError(f"%tunnel {command} takes no arguments (got {words[0]!r})")

    @staticmethod
    def _one_name(command: str, words: list[str]) -> str:
        if len(words) != 1:
            raise UsageError(f"%tunnel {command} takes one tunnel name (got {len(words)})")
        try:
            return check_name(words[0])
        except SpecError as exc:
            raise _as_usage_error(exc) from None

    # open -----------------------------------------------------------------------------
    def open(self, words: list[str], args: Any) -> Tunnel:
        """Open (or reuse) the tunnel the words and options describe; show its card."""
        if not words:
            raise UsageError(HINT)
        try:
            spec = make_spec(words, args.via, name=args.name, local_port=args.local_port,
                             remote_port=args.remote_port, launch=args.launch,
                             ssh_config=args.ssh_config or self.manager.ssh_config or None,
                             forwards=args.forward, reverse=args.reverse,
                             jupyter=not args.no_jupyter)
        except SpecError as exc:
            raise _as_usage_error(exc) from None
        existing = self.reusable(spec)
        if existing is not None:
            self.show(existing, note=f"already open in this kernel: reusing it (a new one: "
                                     f"%tunnel … --name OTHER; close: %tunnel close "
                                     f"{existing.name})")
            return existing
        try:
            # a hop's question: an input box under this cell (a password box for a secret);
            # a reconnect's while the kernel is idle: the card's answer box
            tunnel = self.manager.prepare(spec, ask=NotebookAsk(self.manager.answer_timeout + 5))
        except TunnelError as exc:
            raise _shown_error(exc) from None
        card = self.show(tunnel)
        try:
            self.manager.start(tunnel)
        except (TunnelError, KeyboardInterrupt) as exc:
            if card is not None and tunnel.state is not State.FAILED:
                card.close()  # refused before it started (a name in use): the error says why
            elif card is not None and isinstance(exc, KeyboardInterrupt):
                card.note = "interrupted: nothing left open"
                card.refresh()
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise _shown_error(exc) from None
        return tunnel

    def reusable(self, spec: TunnelSpec) -> Tunnel | None:
        """A live tunnel of this kernel that already gives what ``spec`` asks for."""
        def route(s: TunnelSpec) -> TunnelSpec:
            return dataclasses.replace(s, name=None, local_port=0, remote_port=None,
                                       launch=False)

        for tunnel in self.manager.tunnels():
            if tunnel.state not in (State.READY, State.RECONNECTING):
                continue  # a degraded one lacks its Jupyter: open anew (with --launch, say)
            if spec.name and spec.name != tunnel.name:
                continue
            if spec.local_port and spec.local_port != tunnel.local_port:
                continue
            remote = tunnel.remote.port if tunnel.remote else None
            if spec.remote_port and spec.remote_port != remote:
                continue
            if route(spec) == route(tunnel.spec):
                return tunnel
        return None

    def show(self, tunnel: Tunnel, note: str = "") -> Any:
        """Display the live card of ``tunnel`` (text progress outside a Jupyter frontend)."""
        if not self.in_kernel:
            _print_progress(tunnel, note)
            return None
        from .widgets import TunnelCard

        card = TunnelCard(tunnel, note=note)
        display(card)
        self._shown = (self.ip.execution_count, tunnel)
        return card

    def _display_tunnel(self, tunnel: Tunnel) -> None:
        """How a Tunnel shows as a cell's result: its live card (once per cell)."""
        if self._shown == (self.ip.execution_count, tunnel):
            return  # `%tunnel …` as the last line: its card is already there
        self.show(tunnel)

    # list, status, close, cleanup ----------------------------------------------------------
    def show_list(self, names: list[str] | None = None) -> None:
        """All the user's tunnels (this kernel's and every other process's)."""
        try:
            records = self.manager.list()
        except TunnelError as exc:
            raise _as_usage_error(exc) from None
        if not self.in_kernel:
            _print_records(records if names is None else
                           [r for r in records if r["name"] in names])
            return
        from .widgets import TunnelTable

        display(TunnelTable(self.manager.list, names=names))

    def status(self, name: str) -> None:
        """One tunnel: its live card if this kernel owns it, else its record."""
        for tunnel in self.manager.tunnels():
            if tunnel.name == name:
                self.show(tunnel)
                return
        try:
            self.manager.status(name)
        except TunnelError as exc:
            raise _as_usage_error(exc) from None
        self.show_list([name])

    def close(self, names: list[str], *, close_all: bool = False) -> None:
        """Close tunnels by name, or (``close_all``) every one this kernel opened."""
        if close_all and names:
            raise UsageError("give tunnel names or --all, not both")
        if not close_all and not names:
            raise UsageError("%tunnel close needs a tunnel name, or --all for every tunnel "
                             "this kernel opened (%tunnel list shows them)")
        if close_all:
            names = [t.name for t in self.manager.tunnels()]
            if not names:
                print("No tunnels of this kernel to close.")
        for name in names:
            try:
                check_name(name)
                self.manager.close(name)
            except TunnelError as exc:
                raise _as_usage_error(exc) from None
            print(f"closed {name}")

    def cleanup(self, *, on_load: bool = False) -> None:
        """Remove what tunnels of dead processes left behind (the engine's ``cleanup()``)."""
        run = getattr(self.manager, "cleanup", None)
        if run is None:
            if not on_load:
                raise UsageError("%tunnel cleanup needs a newer jupyter_tunnel engine")
            return
        try:
            result = run()
        except TunnelError as exc:
            if on_load:
                print(f"jupyter_tunnel: cleanup failed: {exc.message}", file=sys.stderr)
                return
            raise _as_usage_error(exc) from None
        text = cleanup_report(result, brief=on_load)
        if text:
            print(text)


def cleanup_report(result: dict[str, Any], *, brief: bool = False) -> str:
    """What ``TunnelManager.cleanup()`` did, for people; ``brief`` omits what it left."""
    def names(records: list[dict[str, Any]]) -> str:
        return ", ".join(_describe(r) for r in records)

    lines = []
    removed, ended, left = (list(result.get(k) or []) for k in ("removed", "ended", "left"))
    if removed:
        lines.append(f"jupyter_tunnel: removed {len(removed)} record(s) of tunnels whose "
                     f"process is gone: {names(removed)}")
    if ended:
        lines.append(f"jupyter_tunnel: ended {len(ended)} leftover tunnel process(es): "
                     f"{names(ended)}")
    if left and not brief:
        lines.append(f"jupyter_tunnel: left {len(left)} alone: {names(left)}")
    if not lines and not brief:
        lines.append("Nothing to clean up.")
    return "\n".join(lines)


def _describe(item: dict[str, Any]) -> str:
    """One entry of a cleanup report: a record (name, why) or a process (tunnel, pid, why)."""
    name = str(item.get("name") or item.get("tunnel") or "?")
    if item.get("why"):
        return f"{name} ({item['why']})"
    if item.get("command"):
        return f"{name} (pid {item.get('pid')}: {item['command']})"
    return name


# text output (IPython in a terminal) --------------------------------------------------------
def _print_progress(tunnel: Tunnel, note: str) -> None:
    if note:
        print(f"{tunnel.name}: {note}")

    def on_event(t: Tunnel, event: str) -> None:
        if event == "hop" and t.state is State.CONNECTING:
            hop = t.chain[t.hop_index]
            print(f"  [{t.hop_index + 1}/{len(t.chain)}] connecting to {hop.label} as "
                  f"{hop.user}", flush=True)
        elif event == "notice":
            print(f"  {t.notices[-1]}", flush=True)
        elif event == "state" and t.state is State.READY:
            print(_ready_line(t), flush=True)

    if tunnel.state is State.READY:
        print(_ready_line(tunnel))
    else:
        tunnel.on_event(on_event)


def _ready_line(tunnel: Tunnel) -> str:
    if tunnel.url and under_hub():  # printed URLs become links: words instead
        return f"Tunnel {tunnel.name} ready: {hub_note(tunnel.hops, tunnel.url)}"
    what = tunnel.url or ", ".join(f"{f['type']} {f['listen']} -> {f['to']}"
                                   for f in tunnel.forwards)
    return f"Tunnel {tunnel.name} ready: {what}"


def _print_records(records: list[dict[str, Any]]) -> None:
    if not records:
        print("No tunnels.")
        return
    for r in records:
        hops = " -> ".join(r.get("hops") or [])
        up = f"up {time.time() - float(r['created']):.0f} s" if r.get("created") else ""
        print(f"{r['name']:<16} {r.get('state', '?'):<12} 127.0.0.1:{r.get('local_port') or '-':<6}"
              f" {hops:<28} {r.get('owner', '?')} (pid {r.get('pid')}) {up}")


# extension hooks (called from jupyter_tunnel.load_ipython_extension) ------------------------
def load_ipython_extension(ipython: Any) -> None:
    """Register ``%tunnel`` and hook the kernel's lifecycle; loading twice is harmless."""
    if "TunnelMagics" in ipython.magics_manager.registry:
        return
    magics = TunnelMagics(ipython)
    ipython.register_magics(magics)
    magics.install()


def unload_ipython_extension(ipython: Any) -> None:
    """Close the tunnels this kernel opened and remove ``%tunnel``."""
    magics = ipython.magics_manager.registry.pop("TunnelMagics", None)
    if magics is None:
        return
    ipython.magics_manager.magics["line"].pop("tunnel", None)
    magics.uninstall()
