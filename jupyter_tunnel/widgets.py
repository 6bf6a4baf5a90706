"""The live status card of one tunnel and the table of all tunnels, from stock ipywidgets.

Views are redrawn on the engine's events (from its threads) and by one daemon ticker that
refreshes counters and the registry once a second; ipywidgets allows updates from any thread.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import ipywidgets as widgets  # type: ignore[import-untyped]

from .humanize import hub_note, human_bytes, human_duration, resume_text, under_hub
from .state import State
from .tunnel import Tunnel
from .widgets_answer import AnswerBox, waits_here

log = logging.getLogger("jupyter_tunnel")

#: badge colours by state (a state missing here is shown grey)
COLORS = {
    "connecting": "#b26a00", "detecting": "#b26a00", "reconnecting": "#b26a00",
    "ready": "#2e7d32", "degraded": "#e65100", "failed": "#c62828", "closed": "#616161",
    "orphaned": "#6a1b9a",
}  # fmt: skip
LIVE = (State.READY, State.DEGRADED, State.RECONNECTING)
DONE = (State.CLOSED, State.FAILED)
_GREY, _GREEN, _AMBER, _RED = "#757575", "#2e7d32", "#b26a00", "#c62828"

_updates = True  # False once the kernel is shutting down: send nothing more


def stop_updates() -> None:
    """Stop redrawing views (the kernel is going away; its channels may be closing)."""
    global _updates
    _updates = False


# formatting -------------------------------------------------------------------------
def badge(state: str) -> str:
    """A coloured pill naming the state."""
    color = COLORS.get(state, _GREY)
    return (f'<span class="jt-badge" data-state="{html.escape(state)}" style="background:{color};'
            'color:white;border-radius:9px;padding:1px 9px;font-weight:600;font-size:90%">'
            f"{html.escape(state)}</span>")


def _span(text: str, color: str, title: str = "") -> str:
    tip = f' title="{html.escape(title)}"' if title else ""
    return f'<span style="color:{color}"{tip}>{text}</span>'


def _html(css_class: str) -> Any:
    view = widgets.HTML()
    view.add_class(css_class)
    return view


# the ticker -------------------------------------------------------------------------
class _View(Protocol):
    def tick(self) -> bool: ...


class _Ticker:
    """One daemon thread that calls ``tick()`` on every live view each second.

    A view that returns False (closed, or nothing left to update) is dropped.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._views: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, view: _View) -> None:
        with self._lock:
            self._views.add(view)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="jupyter-tunnel-ticker",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while _updates:
            time.sleep(self.interval)
            with self._lock:
                views = list(self._views)
                if not views:
                    self._thread = None
                    return
            for view in views:
                if not _updates:
                    return
                try:
                    keep = view.tick()
                except Exception:  # a view that cannot redraw must not stop the others
                    log.debug("tunnel view refresh failed", exc_info=True)
                    keep = False
                if not keep:
                    with self._lock:
                        self._views.discard(view)


ticker = _Ticker()
#: the newest view of each tunnel and of each table filter: only those tick (an older card of
#: the same tunnel still follows its events, its uptime stops counting)
_newest: weakref.WeakValueDictionary[Any, Any] = weakref.WeakValueDictionary()


# the card ---------------------------------------------------------------------------
class TunnelCard(widgets.VBox):  # type: ignore[misc]
    """A live card for one tunnel: hops, state, link, counters, Close and Reconnect."""

    def __init__(self, tunnel: Tunnel, note: str = "") -> None:
        self.tunnel = tunnel
        self.note = note
        self._lock = threading.RLock()
        self._phase = tunnel.state  # the last state before a failure: where it failed
        self._launching = False
        self._error_note = ""  # why the last Reconnect failed
        self.badge = _html("jt-state")
        self.title = _html("jt-title")
        self.hops = _html("jt-hops")
        steps = len(tunnel.chain) + (1 if tunnel.spec.jupyter else 0)
        self.progress = widgets.IntProgress(min=0, max=steps,
                                            layout=widgets.Layout(width="260px", height="14px"))
        self.progress.add_class("jt-progress")
        self.link = _html("jt-url")
        self.stats = _html("jt-stats")
        self.message = _html("jt-message")
        self.answer = AnswerBox(tunnel)  # a question no running cell can ask
        self.close_button = widgets.Button(description="Close", icon="times",
                                           tooltip="Close the tunnel",
                                           layout=widgets.Layout(width="auto"))
        self.close_button.add_class("jt-close")
        self.reconnect_button = widgets.Button(
            description="Reconnect", icon="refresh", layout=widgets.Layout(width="auto"),
            tooltip="Drop the SSH connections and connect again now")
        self.reconnect_button.add_class("jt-reconnect")
        row = widgets.Layout(align_items="center")
        super().__init__(
            children=[
                widgets.HBox([self.badge, self.title], layout=row),
                widgets.HBox([self.hops, self.progress], layout=row),
                self.link, self.stats, widgets.VBox([self.message, self.answer]),
                widgets.HBox([self.close_button, self.reconnect_button], layout=row),
            ],
            layout=widgets.Layout(border="1px solid #d0d0d0", padding="6px 12px",
                                  margin="4px 0", width="fit-content", max_width="900px"),
        )
        self.add_class("jt-card")
        card = weakref.ref(self)

        def on_event(_tunnel: Tunnel, event: str) -> None:
            view = card()
            if view is not None:
                view.on_event(event)

        tunnel.on_event(on_event)
        self.close_button.on_click(lambda _b: self.close_tunnel())
        self.reconnect_button.on_click(lambda _b: self.reconnect())
        self.refresh()
        _newest[("card", id(tunnel))] = self
        ticker.add(self)

    def __repr__(self) -> str:
        """The text a frontend without widgets shows (no token: it ends up in notebooks)."""
        t = self.tunnel
        url = f", {t.url.split('?', 1)[0]}" if t.url else ""
        if t.url and under_hub():  # as text: a frontend would make a link of the URL
            url = f", {t.url.split('?', 1)[0].split('://', 1)[-1]}"
        return f"<tunnel {t.name}: {t.state.value}, {' -> '.join(t.hops)}{url}>"

    # actions --------------------------------------------------------------------
    def close_tunnel(self) -> None:
        """The Close button: close the tunnel (quick; the card follows its events)."""
        self.close_button.disabled = True
        self.close_button.description = "Closing…"
        self.tunnel.close()
        self.refresh()

    def reconnect(self) -> None:
        """The Reconnect button: force a reconnect now, in the background."""
        method = getattr(self.tunnel, "reconnect", None)
        if method is None:
            return
        self.reconnect_button.disabled = True

        def run() -> None:
            try:
                method()
            except Exception as exc:  # shown on the card, not lost in a thread
                self._error_note = getattr(exc, "message", str(exc))
            self.refresh()

        self._error_note = ""
        threading.Thread(target=run, name=f"jupyter-tunnel-reconnect-{self.tunnel.name}",
                         daemon=True).start()

    # drawing --------------------------------------------------------------------
    def on_event(self, event: str) -> None:
        if event == "launch":
            self._launching = True
        if self.tunnel.state is not State.FAILED:
            self._phase = self.tunnel.state
        self.refresh()

    def tick(self) -> bool:
        """Called each second by the ticker; False once nothing will change any more."""
        if self.comm is None or _newest.get(("card", id(self.tunnel))) is not self:
            return False  # closed, or a newer card of this tunnel ticks instead
        self.refresh()
        return self.tunnel.state not in DONE

    def refresh(self) -> None:
        """Redraw from the tunnel's current state and counters."""
        if not _updates:
            return
        t = self.tunnel
        with self._lock:
            info = t.to_dict()
            state = t.state
            self.badge.value = badge(state.value)
            what = "Jupyter on" if t.spec.jupyter else "forwards through"
            self.title.value = (f"<b>{html.escape(t.name)}</b> &nbsp;"
                                f"<span style='color:{_GREY}'>{what} "
                                f"{html.escape(t.chain[-1].alias)}</span>")
            done, marks = self._marks(state)
            self.hops.value = " → ".join([_span("this computer", _GREY), *marks])
            self.progress.value = done
            self.progress.bar_style = {"failed": "danger", "ready": "success"}.get(
                state.value, "info")
            self.progress.layout.display = (
                None if state in (State.CONNECTING, State.DETECTING, State.RECONNECTING)
                else "none")
            self.link.value = self._link(info, state)
            self.stats.value = self._stats(info, state)
            here = waits_here(t, info.get("prompt"))
            self.answer.show(info.get("prompt") if here else None)
            self.message.value = self._message(info, state, here)
            self.close_button.disabled = state in DONE
            if state in DONE:
                self.close_button.description = "Closed" if state is State.CLOSED else "Close"
            can = hasattr(t, "reconnect")
            self.reconnect_button.disabled = not can or state not in LIVE
            if not can:
                self.reconnect_button.tooltip = "Reconnect needs a newer jupyter_tunnel engine"

    def _marks(self, state: State) -> tuple[int, list[str]]:
        """(steps done, one mark per hop and one for Jupyter) for the hop chain."""
        t = self.tunnel
        steps = [(hop.alias, f"{hop.user}@{hop.label}") for hop in t.chain]
        if t.spec.jupyter:
            port = t.remote.port if t.remote else t.spec.remote_port
            steps.append(("Jupyter" + (f" :{port}" if port else ""),
                          f"the Jupyter server on {t.chain[-1].alias}"))
        phase = self._phase if state is State.FAILED else state
        if phase in (State.CONNECTING, State.RECONNECTING):
            active = t.hop_index
        elif phase is State.DETECTING:
            active = len(t.chain)
        else:  # ready, degraded, closed
            active = len(steps)
        marks = []
        for i, (text, title) in enumerate(steps):
            name = html.escape(text)
            if state is State.CLOSED:
                marks.append(_span(name, _GREY, title))
            elif i < active:
                marks.append(_span(f"✓ {name}", _GREEN, title))
            elif i == active and state is State.FAILED:
                marks.append(_span(f"✗ {name}", _RED, title))
            elif i == active:
                marks.append(_span(f"⋯ <b>{name}</b>", _AMBER, title))
            else:
                marks.append(_span(f"○ {name}", _GREY, title))
        return min(active, len(steps)), marks

    @staticmethod
    def _link(info: dict[str, Any], state: State) -> str:
        lines = []
        url = info.get("url")
        if url:
            shown = html.escape(url.split("?", 1)[0])
            if state in DONE:
                lines.append(f"<s style='color:{_GREY}'>{shown}</s>")
            elif under_hub():  # no link: it would lead nowhere from the user's browser
                note = html.escape(hub_note(list(info.get("hops") or []), url), quote=False)
                lines.append(f"<span class='jt-hub-note' style='color:{_GREY}'>{note}</span>")
            else:
                lines.append(
                    f'<a href="{html.escape(url)}" target="_blank" rel="noopener noreferrer" '
                    f'style="color:#1565c0;text-decoration:underline">{shown}</a>'
                    f" <span style='color:{_GREY}'>(the link carries the token)</span>")
        for f in info.get("forwards") or []:
            text = html.escape(f"{f.get('type')} {f.get('listen')} → {f.get('to')}")
            lines.append(f"<s style='color:{_GREY}'>{text}</s>" if state in DONE else text)
        return "<br>".join(lines)

    @staticmethod
    def _stats(info: dict[str, Any], state: State) -> str:
        if state is State.FAILED or not (info.get("local_port") or info.get("forwards")):
            return ""
        created = float(info.get("created") or time.time())
        if state is State.CLOSED:  # frozen at the close
            parts = [f"was up {human_duration(float(info.get('since') or created) - created)}"]
        else:
            parts = [f"up {human_duration(time.time() - created)}"]
        n = int(info.get("reconnects") or 0)
        parts.append(f"{n} reconnect{'s' if n != 1 else ''}")
        parts.append(f"in {human_bytes(info.get('bytes_in', 0))}, "
                     f"out {human_bytes(info.get('bytes_out', 0))}")
        if "connections" in info and state is not State.CLOSED:
            c = int(info["connections"] or 0)
            parts.append(f"{c} connection{'s' if c != 1 else ''} open")
        if state is not State.CLOSED and (resume := resume_text(info.get("resume"))):
            parts.append(resume)
        return f"<span style='color:{_GREY}'>{' · '.join(parts)}</span>"

    def _message(self, info: dict[str, Any], state: State, here: bool = False) -> str:
        t = self.tunnel
        lines: list[str] = []
        if self.note:
            lines.append(_span(html.escape(self.note), _GREY))
        prompt = info.get("prompt")
        if prompt:  # the server's words, as text; answered on the card or under the cell
            where = "answer it here" if here else "answer in the box under the cell"
            lines.append(_span(html.escape(f"{prompt['label']} asks: {prompt['text'].strip()} "
                                           f"({where})"), _AMBER))
        elif state is State.FAILED:
            text = (info.get("error") or {}).get("error") or "the tunnel failed"
            lines.append(_span(html.escape(text), _RED))
        elif state is State.CONNECTING:
            hop = t.chain[min(t.hop_index, len(t.chain) - 1)]
            lines.append(_span(html.escape(f"connecting to {hop.label} as {hop.user}"), _AMBER))
        elif state is State.DETECTING:
            where = html.escape(t.chain[-1].alias)
            doing = "starting JupyterLab on" if self._launching else \
                "looking for a running Jupyter server on"
            lines.append(_span(f"{doing} {where}", _AMBER))
        elif state is State.RECONNECTING:
            lines.append(_span(html.escape(_reconnect_text(info)), _AMBER))
        elif state is State.DEGRADED:
            problem = info.get("problem") or "the remote Jupyter does not answer"
            lines.append(_span(html.escape(f"degraded: SSH is up but {problem}"), _AMBER))
        if self._error_note:
            lines.append(_span(html.escape(f"reconnect failed: {self._error_note}"), _RED))
        lines.extend(_span(html.escape(n), _GREY) for n in t.notices[-3:])
        return "<br>".join(lines)


def _reconnect_text(info: dict[str, Any]) -> str:
    text = "reconnecting"
    if info.get("problem"):
        text += f" ({info['problem']})"
    if info.get("attempt"):
        text += f": attempt {info['attempt']}"
    next_try = info.get("next_try")
    if isinstance(next_try, (int, float)):
        wait = next_try - time.time() if next_try > 1e9 else next_try
        if wait > 0:
            text += f", next try in {wait:.0f} s"
    return text


# the table --------------------------------------------------------------------------
class TunnelTable(widgets.VBox):  # type: ignore[misc]
    """A live table of every tunnel of the user (all processes), from the registry."""

    def __init__(self, source: Callable[[], list[dict[str, Any]]],
                 names: list[str] | None = None, every: int = 2) -> None:
        self.source = source
        self.names = names
        self.every = every
        self._ticks = 0
        self.table = _html("jt-table")
        super().__init__(children=[self.table])
        self.add_class("jt-list")
        self.refresh()
        self._key = ("table", tuple(names) if names is not None else None)
        _newest[self._key] = self
        ticker.add(self)

    def __repr__(self) -> str:
        records = self.source()
        if self.names is not None:
            records = [r for r in records if r.get("name") in self.names]
        rows = [f"{r.get('name')}: {r.get('state')}, {' -> '.join(r.get('hops') or [])}"
                for r in records]
        return "\n".join(rows) or "No tunnels."

    def tick(self) -> bool:
        if self.comm is None or _newest.get(self._key) is not self:
            return False
        self._ticks += 1
        if self._ticks % self.every == 0:
            self.refresh()
        return True

    def refresh(self) -> None:
        if not _updates:
            return
        records = self.source()
        if self.names is not None:
            records = [r for r in records if r.get("name") in self.names]
        self.table.value = render_table(records)


def render_table(records: list[dict[str, Any]]) -> str:
    """The HTML table of tunnel records (``TunnelManager.list()``)."""
    if not records:
        return "<i>No tunnels.</i>"
    cell = "padding:2px 10px;text-align:left;vertical-align:top"
    head = "".join(f"<th style='{cell}'>{h}</th>" for h in
                   ("name", "state", "hops", "local", "owner", "up", "reconnects"))
    rows = []
    me = os.getpid()
    for r in records:
        url, port = r.get("url"), r.get("local_port")
        local = f"127.0.0.1:{port}" if port else "-"
        if (url and r.get("state") in ("ready", "degraded") and r.get("pid") == me
                and not under_hub()):
            # a link (with its token) only for this kernel's tunnels, whose cards show it
            # anyway: a saved notebook must not carry the tokens of other processes' tunnels
            local = (f'<a href="{html.escape(url)}" target="_blank" rel="noopener noreferrer" '
                     f'style="color:#1565c0">{html.escape(local)}</a>')
        else:
            local = html.escape(local)
        owner = "this kernel" if r.get("pid") == me else f"{r.get('owner', '?')} ({r.get('pid')})"
        up = human_duration(time.time() - float(r["created"])) if r.get("created") else "-"
        state = str(r.get("state", "?"))
        err = (r.get("error") or {}).get("error")
        extra = f"<br>{_span(html.escape(err), _RED)}" if err else ""
        values = [f"<b>{html.escape(str(r.get('name')))}</b>", badge(state) + extra,
                  html.escape(" → ".join(r.get("hops") or [])), local, html.escape(owner), up,
                  html.escape(str(r.get("reconnects", 0)))]
        rows.append("<tr>" + "".join(f"<td style='{cell}'>{v}</td>" for v in values) + "</tr>")
    return (f"<table class='jt-tunnels' style='border-collapse:collapse'><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
