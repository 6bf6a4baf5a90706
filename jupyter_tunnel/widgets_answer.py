"""The card's answer box: a hop's question that waits in the tunnel's mailbox, because no
cell ran to ask in (the card's Reconnect, or an automatic reconnect, while the kernel is
idle), is answered on the card itself.

The box belongs to one question (its id): a new question gets a fresh empty box, none hides
it.  Only **Answer** sends: a half-typed code must not go when the cursor leaves the field
(a refused answer fails the login, and servers count tries), so the field syncs as it is
typed and no sync sends anything.  On Answer its value is emptied and handed to
:func:`~jupyter_tunnel.login.mailbox.deliver` in a thread of its own.  Answers are never
logged or kept; the server's words are shown as text.
"""

from __future__ import annotations

import html
import logging
import threading
from typing import Any

import ipywidgets as widgets  # type: ignore[import-untyped]
from traitlets import Unicode

from .errors import TunnelError
from .login.mailbox import Mailbox, deliver
from .tunnel import Tunnel

log = logging.getLogger("jupyter_tunnel")

_GREY, _RED = "#757575", "#c62828"


def waits_here(tunnel: Tunnel, prompt: dict[str, Any] | None) -> bool:
    """Whether ``prompt`` (the tunnel JSON's) waits in the tunnel's mailbox, to be answered
    on the card (False while it is asked in the running cell's input box)."""
    if not prompt or not isinstance(tunnel.ask, Mailbox):
        return False
    return any(q.id == prompt.get("id") for q in tunnel.ask.waiting())


class _Secret(widgets.Password):  # type: ignore[misc]
    # the kernel does not echo the typed value back to the browser
    value = Unicode(help="String value").tag(sync=True, echo_update=False)


class AnswerBox(widgets.HBox):  # type: ignore[misc]
    """A field (a password field for a secret), Answer, and the reason an answer was not
    taken, for the question of ``tunnel`` that waits in its mailbox."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self._lock = threading.RLock()
        self._id: str | None = None  # the question the box is for
        self._busy = False  # an answer is on its way, or was taken
        self._tried = False  # an answer was sent for this question
        self.field = self._field(echo=False, placeholder="")
        self.button = widgets.Button(description="Answer", tooltip="Send the answer",
                                     layout=widgets.Layout(width="auto"))
        self.button.add_class("jt-answer-button")
        self.error = widgets.HTML()
        self.error.add_class("jt-answer-error")
        super().__init__(children=[self.field, self.button, self.error],
                         layout=widgets.Layout(display="none", align_items="center"))
        self.add_class("jt-answer")
        self.button.on_click(lambda _b: self.submit())

    @staticmethod
    def _field(*, echo: bool, placeholder: str) -> Any:
        field = (widgets.Text if echo else _Secret)(
            value="", placeholder=placeholder, continuous_update=True,
            layout=widgets.Layout(width="260px"))
        field.add_class("jt-answer-field")
        return field

    def show(self, prompt: dict[str, Any] | None) -> None:
        """Show the box for ``prompt`` (the tunnel JSON's; a fresh box for a new id), or
        hide it (None)."""
        with self._lock:
            question_id = prompt.get("id") if prompt else None
            if question_id == self._id:
                return
            self._id, self._busy, self._tried = question_id, False, False
            old = self.field
            self.error.value = ""
            self.button.disabled = False
            if prompt is None:
                old.value = ""
                self.layout.display = "none"
                return
            text = str(prompt.get("text") or "").strip().rstrip(":").strip()
            self.field = self._field(echo=bool(prompt.get("echo")),
                                     placeholder=text[:60] or "the answer")
            self.children = [self.field, self.button, self.error]
            self.layout.display = None
        old.close()

    def submit(self) -> None:
        """The Answer button: send what the field holds."""
        with self._lock:
            if self.field.value:
                self._deliver(self.field, self._id)
            elif not self._busy and not self._tried:
                self.error.value = _note("type the answer first", _RED)

    def _deliver(self, field: Any, question_id: str | None) -> None:
        with self._lock:
            answer, field.value = field.value, ""  # the secret leaves the widget at once
            if not answer or question_id is None or question_id != self._id or self._busy:
                return
            self._busy = self._tried = True
            field.disabled = self.button.disabled = True
            self.error.value = _note("answering…", _GREY)

        def run() -> None:
            try:
                deliver(self.tunnel, question_id, answer)
            except TunnelError as exc:
                self._failed(question_id, field, exc.message)
            except Exception as exc:  # shown on the card, not lost in a thread
                log.debug("tunnel %s: answering failed: %s", self.tunnel.name,
                          type(exc).__name__)
                self._failed(question_id, field, f"the answer could not be given "
                                                 f"({type(exc).__name__})")

        threading.Thread(target=run, daemon=True,
                         name=f"jupyter-tunnel-answer-{self.tunnel.name}").start()

    def _failed(self, question_id: str, field: Any, message: str) -> None:
        with self._lock:
            if question_id != self._id:
                return  # another question (or none) is shown now
            self._busy = False
            field.disabled = self.button.disabled = False
            self.error.value = _note(f"Not answered: {message}", _RED)


def _note(text: str, color: str) -> str:
    return f'<span style="color:{color}">{html.escape(text)}</span>'
