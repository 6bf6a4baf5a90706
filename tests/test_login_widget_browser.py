"""Logins that ask, on the notebook's card (headless chromium against JupyterLab): `%tunnel
beast via unicorn`, where unicorn wants a one-time code after the key.  While the cell runs,
JupyterLab's password box under the cell asks (the card says to answer there).  Later, with
the kernel idle, the card's Reconnect makes unicorn ask again: no cell runs, so the card
itself shows the question ("answer it here") with a password field and Answer; the code
typed there reconnects the tunnel on Answer (never as the cursor leaves the field: a
half-typed code would be refused) and leaves no field holding it.

Screenshots land in test-artifacts/login-widget/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from browser import Lab, artifact
from test_login_sshtunnel import _registry_text

from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network
pytest_plugins = ["browser"]

WAIT = 60_000  # ms: a login through the sandbox plus a busy machine



def any_input_holds(page: Any, text: str) -> bool:
    """Whether any field of the page (the DOM's inputs) holds ``text``."""
    return bool(page.evaluate(
        "t => Array.from(document.querySelectorAll('input')).some(i => i.value.includes(t))",
        text))


def write_notebook(path: Path, ssh_config: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        f"%load_ext jupyter_tunnel\n%config TunnelManager.ssh_config = {str(ssh_config)!r}\n"
        "%config TunnelManager.backend = 'sshtunnel'"),
        nbformat.v4.new_code_cell("%tunnel beast via unicorn")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))


def test_a_reconnect_while_the_kernel_is_idle_is_answered_on_the_card(
        lab_factory: Callable[..., Lab], browser: Any, totp_net: Sandbox, runtime_dir: Path,
        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    (tmp_path / "ipython").mkdir()
    lab = lab_factory(env={"IPYTHONDIR": str(tmp_path / "ipython")})
    write_notebook(lab.root / "asks.ipynb", totp_net.ssh_config)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT)
    idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    step = "loading the notebook"
    try:
        page.goto(lab.page_url("lab/tree/asks.ipynb"))
        idle.wait_for()
        page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator("[data-command='runmenu:run-all']").click()

        step = "the first question, under the running cell"
        stdin = page.locator(".jp-Stdin")
        stdin.wait_for()
        asked = stdin.locator(".jp-Stdin-prompt").inner_text()
        assert asked.startswith("unicorn (") and "One-time password (OATH)" in asked, asked
        typed = stdin.locator("input.jp-Stdin-input")
        expect(typed).to_have_attribute("type", "password")
        card = page.locator(".jt-card")
        message, box = card.locator(".jt-message"), card.locator(".jt-answer")
        expect(message).to_contain_text("answer in the box under the cell", timeout=WAIT)
        expect(box).to_be_hidden()
        page.screenshot(path=str(artifact("login-widget/asked-under-the-cell.png")))
        typed.fill(totp_net.next_code())
        typed.press("Enter")
        ready = card.locator(".jt-state [data-state='ready']")
        ready.wait_for()
        expect(card.locator(".jt-stats")).to_contain_text("0 reconnects", timeout=WAIT)
        expect(message).not_to_contain_text("asks", timeout=WAIT)

        step = "Reconnect with the kernel idle: the question on the card"
        idle.wait_for()
        card.locator(".jt-reconnect").click()
        expect(message).to_contain_text("answer it here", timeout=WAIT)
        text = message.inner_text()
        assert text.startswith("unicorn (") and "asks: One-time password (OATH)" in text, text
        assert "under the cell" not in text, text
        expect(card.locator(".jt-state [data-state='reconnecting']")).to_be_visible()
        expect(box).to_be_visible()
        field = box.locator(".jt-answer-field input")
        expect(field).to_have_attribute("type", "password")
        expect(field).to_have_value("")
        expect(page.locator(".jp-Stdin")).to_have_count(0)  # no cell asks this time
        card.screenshot(path=str(artifact("login-widget/card-asks.png")))

        step = "answering on the card"
        code = totp_net.next_code()
        field.fill(code)
        box.locator(".jt-answer-button").click()
        ready.wait_for()
        expect(card.locator(".jt-stats")).to_contain_text(re.compile(r"\b1 reconnect\b"),
                                                         timeout=WAIT)
        expect(box).to_be_hidden(timeout=WAIT)
        expect(message).not_to_contain_text("asks", timeout=WAIT)
        assert not any_input_holds(page, code)  # the field was emptied
        assert code not in _registry_text(runtime_dir)
        card.screenshot(path=str(artifact("login-widget/card-ready-again.png")))

        step = "a second Reconnect: a fresh box; leaving the field sends nothing"
        idle.wait_for()
        card.locator(".jt-reconnect").click()
        expect(message).to_contain_text("answer it here", timeout=WAIT)
        expect(field).to_have_value("")
        expect(field).to_be_enabled()
        field.fill("12")
        field.press("Tab")  # the cursor leaves the half-typed code
        card.locator(".jt-stats").click()
        expect(message).to_contain_text("answer it here")  # the question still waits
        expect(field).to_have_value("12")
        code = totp_net.next_code()
        field.fill(code)
        box.locator(".jt-answer-button").click()
        expect(card.locator(".jt-stats")).to_contain_text(re.compile(r"\b2 reconnects\b"),
                                                         timeout=WAIT)
        ready.wait_for()
        expect(box).to_be_hidden(timeout=WAIT)
        assert not any_input_holds(page, code)

        step = "closing"
        card.locator(".jt-close").click()
        card.locator(".jt-state [data-state='closed']").wait_for()
    except Exception:
        page.screenshot(path=str(artifact("login-widget/failed.png")))
        print(f"failed at: {step}\n{lab.log_tail()}")
        raise
    finally:
        page.close()
