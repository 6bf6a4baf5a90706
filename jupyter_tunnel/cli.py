"""`jupyter tunnel`: open, list, inspect and close tunnels from a shell (starts no server).

`open` and `demo` live in ``cli_open`` and are imported only when used.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from jupyter_core.application import base_aliases, base_flags
from traitlets import Bool

from .cli_base import BaseTunnelApp, common_flags
from .errors import SpecError, TunnelError
from .humanize import human_bytes, human_duration, resume_text


def _why(record: dict[str, Any]) -> str:
    """What is wrong with a tunnel, in words (empty when nothing is)."""
    state = record.get("state")
    if state == "orphaned":
        return (f"its {record.get('owner')} process (pid {record.get('pid')}) is gone; "
                "'jupyter tunnel cleanup' removes it")
    if state == "reconnecting":
        text = f"attempt {record.get('attempt') or 1}"
        if record.get("next_try"):
            text += f", next in {max(0.0, record['next_try'] - time.time()):.0f} s"
        return f"{text}: {record.get('problem')}" if record.get("problem") else text
    err = record.get("error") or {}
    return str(err.get("error") or record.get("problem") or "")


def _row(record: dict[str, Any]) -> str:
    hops = " -> ".join(record.get("hops") or [])
    port = record.get("local_port") or "-"
    state = record.get("state", "?")
    why = _why(record)
    extra = f"  ({why})" if why else ""
    owner = f"{record.get('owner', '?')} (pid {record.get('pid')})"
    return f"{record['name']:<16} {state:<12} 127.0.0.1:{port:<6} {hops:<32} {owner}{extra}"


class ListApp(BaseTunnelApp):
    """jupyter tunnel list."""

    name = "jupyter-tunnel-list"
    description = "List all of your tunnels, whichever process owns them."

    def start(self) -> None:
        self.no_args()
        try:
            records = self.manager().list()
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps([_public(r) for r in records]), flush=True)
            return
        if not records:
            print("No tunnels.")
            return
        print(f"{'NAME':<16} {'STATE':<12} {'LOCAL':<16} {'HOPS':<32} OWNER")
        for record in records:
            print(_row(record))


class StatusApp(BaseTunnelApp):
    """jupyter tunnel status NAME."""

    name = "jupyter-tunnel-status"
    description = "Show one tunnel: state, hops, ports and URL."

    def start(self) -> None:
        try:
            record = self.manager().status(self.name_arg())
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps(_public(record)), flush=True)
            return
        since = record.get("since") or time.time()
        rows: list[tuple[str, Any]] = [
            ("name", record.get("name")),
            ("state", f"{record.get('state')} for {human_duration(time.time() - since)}"),
            ("why", _why(record) or None),
            ("hops", " -> ".join(record.get("hops") or [])),
            ("local_port", record.get("local_port")),
            ("remote_port", record.get("remote_port")),
            ("url", record.get("url")),
        ]
        rows += [("forward", f"{f['type']} {f['listen']} -> {f['to']}")
                 for f in record.get("forwards") or []]
        rows += [
            ("owner", f"{record.get('owner')} (pid {record.get('pid')})"),
            ("up", human_duration(time.time() - (record.get("created") or time.time()))),
            ("reconnects", record.get("reconnects", 0)),
            ("traffic", f"{human_bytes(record.get('bytes_in', 0))} in, "
                        f"{human_bytes(record.get('bytes_out', 0))} out, "
                        f"{record.get('connections', 0)} connection(s) open"),
            ("resume", _resume_line(record.get("resume"))),
        ]
        kernel = record.get("kernel")
        if isinstance(kernel, dict):  # a remote kernel's own tunnel: closing it cuts it off
            rows.append(("kernel", f"{kernel.get('kernelspec')} on {kernel.get('host')} (pid "
                                   f"{kernel.get('pid')} there)"))
        for key, value in rows:
            if key == "why" and value is None:
                continue
            print(f"{key + ':':<13}{value if value is not None else '-'}")


def _resume_line(info: dict[str, Any] | None) -> str:
    """What the resumable connections hold, e.g. "3 connections held, 2.1 MB buffered"."""
    if not info:
        return "off"
    if info.get("held") and not info.get("helper_reached"):
        return f"{resume_text(info)}: they go on when the connection is back"
    reached = "helper reached" if info.get("helper_reached") else "helper not reached now"
    return f"{info.get('connections', 0)} resumable connection(s), {reached}"


class CloseApp(BaseTunnelApp):
    """jupyter tunnel close NAME | --all."""

    name = "jupyter-tunnel-close"
    description = "Close a tunnel (a detached one is ended through its own process)."
    flags = {**common_flags, "all": ({"CloseApp": {"all": True}}, "Close all your tunnels.")}
    all = Bool(False, help="Close all of your tunnels that a command-line process owns.")\
        .tag(config=True)

    def start(self) -> None:
        manager = self.manager()
        if self.all:
            if self.extra_args:
                self.fail(SpecError("give a tunnel name or --all, not both"))
            try:
                names = [r["name"] for r in manager.list()]
            except TunnelError as exc:
                self.fail(exc)
            if not names:
                self.say("No tunnels to close.")
        else:
            names = [self.name_arg()]
        closed, errors = [], []
        for name in names:
            try:
                closed.append(_public(manager.close(name)))
                self.say(f"closed {name}")
            except TunnelError as exc:
                if not self.all:
                    self.fail(exc)
                errors.append(exc.to_dict() | {"name": name})
                self.say(f"not closed {name}: {exc.message}")
        if self.json_output:
            print(json.dumps({"closed": closed, "errors": errors}), flush=True)
        if errors:
            self.quit(1)


class CleanupApp(BaseTunnelApp):
    """jupyter tunnel cleanup."""

    name = "jupyter-tunnel-cleanup"
    description = """Remove what crashed tunnels left behind: records whose owner process is gone,
    and processes they started (proven by pid, start time and command line). A port held by
    another program is reported with its owner, never killed."""

    def start(self) -> None:
        self.no_args()
        try:
            report = self.manager().cleanup()
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps(report), flush=True)
            return
        for item in report["removed"]:
            print(f"removed {item['name']}: {item['why']}")
        for item in report["ended"]:
            print(f"ended pid {item['pid']} ({item['command']}) of {item['tunnel']}")
        for item in report["left"]:
            print(f"left alone: {item['why']}")
        if not any(report.values()):
            print("Nothing to clean up.")


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A record as printed: every field, in a stable order."""
    return {k: record[k] for k in sorted(record)}


class TunnelApp(BaseTunnelApp):
    """jupyter tunnel."""

    name = "jupyter-tunnel"
    description = "Reach a remote JupyterLab through SSH jump hosts in one step."
    examples = """
jupyter tunnel open beast --via unicorn
jupyter tunnel list
jupyter tunnel close beast
jupyter tunnel answer beast
jupyter tunnel kernels install beast --via unicorn
jupyter tunnel cleanup
jupyter tunnel demo
"""
    flags = base_flags
    aliases = base_aliases
    subcommands = {
        "open": ("jupyter_tunnel.cli_open.OpenApp",
                 "Open a tunnel to the JupyterLab running on TARGET, through jump hosts."),
        "list": (ListApp, ListApp.description),
        "status": (StatusApp, StatusApp.description),
        "close": (CloseApp, CloseApp.description),
        "answer": ("jupyter_tunnel.cli_answer.AnswerApp",
                   "Answer what a hop asks (a one-time code) a tunnel of another process."),
        "kernels": ("jupyter_tunnel.cli_kernels.KernelsApp",
                    "Use a remote host's kernels from your own Jupyter (list, install, "
                    "remove)."),
        "cleanup": (CleanupApp, "Remove what crashed tunnels left behind (records, processes)."),
        "demo": ("jupyter_tunnel.cli_open.DemoApp",
                 "Run a throwaway SSH network here and open beast via unicorn through it."),
    }

    def start(self) -> None:
        if self.subapp is None and not self.generate_config:
            words = ", ".join(self.subcommands)
            if self.extra_args:
                self.fail(SpecError(f"unknown command {self.extra_args[0]!r}: choose one of "
                                    f"{words} (see jupyter tunnel --help)"))
            print(f"Usage: jupyter tunnel COMMAND ...  with COMMAND one of {words} "
                  "(see --help)", file=sys.stderr)
            self.quit(2)
        super().start()


main = TunnelApp.launch_instance
