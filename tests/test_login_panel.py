"""Logins that ask, in the Tunnels panel (headless chromium against JupyterLab): a user opens
beast via unicorn, a jump host that wants a one-time code after the key; the tunnel's row
shows unicorn's question (the server's words, as text) with a password field; the user
types the code and presses Answer (or Enter) and the row turns ready with its link, or,
with a wrong code, failed, naming unicorn.  While the question waits, the panel's polls
leave what is being typed alone.  The screenshot test-artifacts/panel-question.png shows
the question in the panel.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from browser import Lab, artifact
from test_panel import local_port, open_panel, tid

from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["browser"]
pytestmark = pytest.mark.network

BACKENDS = ["openssh", "sshtunnel"]



def asking_lab(lab_factory: Callable[..., Lab], net: Sandbox, backend: str) -> Lab:
    return lab_factory({"ServerApp": {"jpserver_extensions": {"jupyter_tunnel": True}},
                        "TunnelManager": {"ssh_config": str(net.ssh_config),
                                          "backend": backend}})


def tunnel_json(lab: Lab, name: str) -> dict[str, Any]:
    """The tunnel as the REST API gives it to the panel."""
    request = urllib.request.Request(f"{lab.url}jupyter-tunnel/api/tunnels/{name}",
                                     headers={"Authorization": f"token {lab.token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def is_poll(response: Any) -> bool:
    """A response to the panel's poll of the tunnel list."""
    return bool(response.request.method == "GET"
                and response.url.split("?")[0].endswith("/jupyter-tunnel/api/tunnels"))


def open_beast_via_unicorn(panel: Any) -> Any:
    """Fill the form and click Open, as a user does; the row of the new tunnel."""
    target, via = panel.locator(tid("jt-target")), panel.locator(tid("jt-via")).first
    for _ in range(5):  # chromium's suggestion list may swallow a fill on a busy machine
        target.fill("beast")
        via.fill("unicorn")
        if (target.input_value(), via.input_value()) == ("beast", "unicorn"):
            break
    assert (target.input_value(), via.input_value()) == ("beast", "unicorn")
    panel.locator(tid("jt-open")).click()
    row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast']")
    row.wait_for()
    return row


def any_input_holds(page: Any, text: str) -> bool:
    """Whether any field of the page (the DOM's inputs) holds ``text``."""
    return bool(page.evaluate(
        "t => Array.from(document.querySelectorAll('input')).some(i => i.value.includes(t))",
        text))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_row_asks_for_the_code_and_the_answer_opens_the_tunnel(
        lab_factory: Callable[..., Lab], browser: Any, totp_net: Sandbox,
        backend: str) -> None:
    assert totp_net.jupyter is not None
    lab = asking_lab(lab_factory, totp_net, backend)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(60_000)
    try:
        panel = open_panel(page, lab)
        # the app has started: it put the cursor in the launcher (before the user moves it)
        page.wait_for_function("document.activeElement && "
                               "document.activeElement.classList.contains('jp-Launcher')")
        row = open_beast_via_unicorn(panel)
        question = row.locator(tid("jt-question"))
        question.wait_for(timeout=40_000)
        prompt = tunnel_json(lab, "beast")["prompt"]
        assert prompt is not None and prompt["hop"] == "unicorn", prompt

        # who asks and the server's own words, as text; a password field for the secret
        assert row.get_attribute("data-state") == "connecting"
        hop = question.locator(tid("jt-question-hop"))
        assert hop.inner_text() == prompt["label"] and prompt["label"].startswith("unicorn (")
        assert question.inner_text().startswith(f"{prompt['label']} asks:")
        text = question.locator(tid("jt-question-text"))
        assert text.evaluate("e => e.textContent") == prompt["text"]
        assert text.evaluate("e => e.children.length") == 0  # no markup made of it
        assert prompt["text"].startswith("One-time password (OATH) for `")
        field = question.locator(tid("jt-answer"))
        assert field.get_attribute("type") == "password"
        assert field.get_attribute("autocomplete") == "off"
        assert "unicorn (" in (field.get_attribute("aria-label") or "")
        button = question.locator(tid("jt-answer-submit"))
        assert button.inner_text() == "Answer"
        # the cursor waits in the field (the user was in the panel, after Open)
        page.wait_for_function("document.activeElement && "
                               "document.activeElement.dataset.testid === 'jt-answer'")
        panel.screenshot(path=str(artifact("panel-question.png")))

        # the panel's polls keep the field and what is typed in it
        field.fill("12")
        kept = field.element_handle()
        for _ in range(2):
            with page.expect_response(is_poll):
                pass
        assert kept.evaluate("e => e.isConnected")
        assert field.input_value() == "12"

        # no empty answer by accident; a refused request says why next to the field and
        # leaves the question waiting, the field emptied
        field.fill("")
        button.click()
        error = question.locator(tid("jt-answer-error"))
        error.filter(has_text="Type the answer first.").wait_for()
        field.fill("9" * 5000)
        button.click()
        error.filter(has_text="longer than 4096 characters").wait_for()
        assert error.inner_text().startswith("Not answered: ")
        assert field.input_value() == "" and field.is_enabled() and button.is_enabled()
        assert tunnel_json(lab, "beast")["prompt"] == prompt

        code = totp_net.next_code()
        field.fill(code)
        button.click()
        ready = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']")
        ready.wait_for(timeout=40_000)
        question.wait_for(state="detached")
        assert row.locator(tid("jt-error")).inner_text() == ""
        link = row.locator(tid("jt-link"))
        assert link.is_visible() and link.inner_text() == "Open JupyterLab"
        href = link.get_attribute("href") or ""
        assert f"token={totp_net.jupyter.token}" in href
        local_port(href)
        assert not any_input_holds(page, code)

        row.locator(tid("jt-close")).click()
        row.wait_for(state="detached", timeout=15_000)
    except Exception:
        page.screenshot(path=str(artifact(f"panel-question-failure-{backend}.png")))
        print(lab.log_tail())
        raise
    finally:
        page.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrong_code_fails_the_row_naming_unicorn(
        lab_factory: Callable[..., Lab], browser: Any, totp_net: Sandbox,
        backend: str) -> None:
    lab = asking_lab(lab_factory, totp_net, backend)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(60_000)
    try:
        panel = open_panel(page, lab)
        row = open_beast_via_unicorn(panel)
        question = row.locator(tid("jt-question"))
        question.wait_for(timeout=40_000)
        assert question.locator(tid("jt-question-hop")).inner_text().startswith("unicorn (")

        right = totp_net.next_code()
        wrong = "000000" if right != "000000" else "111111"
        field = question.locator(tid("jt-answer"))
        field.fill(wrong)
        field.press("Enter")  # Enter answers, as the button does
        failed = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='failed']")
        failed.wait_for(timeout=40_000)
        question.wait_for(state="detached")
        said = row.locator(tid("jt-error")).inner_text()
        assert "unicorn" in said and "refused" in said, said
        assert not row.locator(tid("jt-link")).is_visible()
        assert not any_input_holds(page, wrong)
        panel.screenshot(path=str(artifact(f"panel-question-refused-{backend}.png")))

        assert row.locator(tid("jt-close")).inner_text() == "Dismiss"
        row.locator(tid("jt-close")).click()
        row.wait_for(state="detached", timeout=15_000)
    except Exception:
        page.screenshot(path=str(artifact(f"panel-refused-failure-{backend}.png")))
        print(lab.log_tail())
        raise
    finally:
        page.close()
