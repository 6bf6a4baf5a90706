"""In chromium, under JupyterHub settings: a tunnel opened from the panel with "Start
JupyterLab there" gets an "Open JupyterLab" link to the remote JupyterLab served through
this server (no note in its place), and that JupyterLab loads and runs a cell on beast."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browser import Lab, artifact
from launched import end_launched, launched_pids, launched_servers
from test_hub_links import HUB_SETTINGS
from test_panel import open_panel, tid, tunnel_lab

from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["browser"]

SERVED = "/jupyter-tunnel/lab/beast/"  # the test Lab's base URL is /


def launched_token(net: Sandbox) -> str:
    """The token of the live server on beast with the served base URL."""
    servers = launched_servers(net, SERVED)
    assert servers, "no launched server on beast"
    token = str(servers[0].get("token") or "")
    assert len(token) >= 32, "the launched server has no token"
    return token


@pytest.fixture
def cleanup_beast(net: Sandbox) -> Iterator[None]:
    before = set(net.home("beast").glob("Untitled*.ipynb"))
    yield
    end_launched(net, SERVED)
    for notebook in set(net.home("beast").glob("Untitled*.ipynb")) - before:
        notebook.unlink(missing_ok=True)


@pytest.mark.network
def test_the_panel_links_to_the_served_lab(lab_factory: Callable[..., Lab], browser: Any,
                                           net: Sandbox, cleanup_beast: None) -> None:
    lab = tunnel_lab(lab_factory, net, args=[
        f"--ServerApp.tornado_settings={json.dumps(HUB_SETTINGS)}"])
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    step = "open from the panel with launch"
    remote: Any = None
    try:
        panel = open_panel(page, lab)
        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        panel.locator(".jp-TunnelPanel-options summary").click()  # the Options fold
        launch = panel.locator(tid("jt-launch"))
        launch.check()
        assert launch.locator("xpath=..").inner_text() == "Start JupyterLab there"
        panel.locator(tid("jt-open")).click()
        row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']")
        row.wait_for(timeout=120_000)
        link = row.locator(tid("jt-link"))
        link.wait_for(state="visible")
        assert link.inner_text() == "Open JupyterLab"
        assert link.get_attribute("href") == SERVED + "lab"
        assert row.locator(tid("jt-hub-note")).is_hidden()
        assert row.locator(tid("jt-serve-why")).is_hidden()
        pids = launched_pids(net, SERVED)
        assert len(pids) == 1
        panel.screenshot(path=str(artifact("serve-panel-link.png")))

        step = "the served JupyterLab loads"
        with context.expect_page() as new_tab:
            link.click()
        remote = new_tab.value
        remote.set_default_timeout(60_000)
        remote.wait_for_selector("#jp-main-dock-panel")
        assert remote.url.startswith(f"{lab.url.rstrip('/')}{SERVED}lab")
        assert remote.evaluate(f"fetch('{SERVED}api/status').then(r => r.status)") == 200
        # beast's home, not this Lab's root
        marker = net.home("beast") / "served-from-beast.txt"
        marker.write_text("beast\n")
        names = remote.evaluate(f"fetch('{SERVED}api/contents').then(r => r.json())"
                                ".then(d => d.content.map(c => c.name))")
        marker.unlink()
        assert "served-from-beast.txt" in names
        # the launched server's token (the one that opens it) is nowhere in its page
        assert launched_token(net) not in remote.content()

        step = "a cell runs on beast (POST with the local XSRF cookie, kernel websocket)"
        beast_ns = net.run_in("beast", [sys.executable, "-c",
                                        "import os; print(os.readlink('/proc/self/ns/net'))"],
                              capture_output=True, text=True).stdout.strip()
        remote.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
        remote.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(
            timeout=90_000)
        remote.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
        cell = remote.locator(".jp-Notebook .jp-Cell .cm-content").first
        cell.click()
        remote.keyboard.type("import os; print(os.readlink('/proc/self/ns/net'))")
        remote.keyboard.press("Shift+Enter")
        output = remote.locator(".jp-Notebook .jp-OutputArea-output").first
        output.wait_for(timeout=60_000)
        assert output.inner_text().strip() == beast_ns
        remote.screenshot(path=str(artifact("serve-remote-lab.png")))
        remote.close()

        step = "close"
        panel.locator(f"{tid('jt-tunnel')}[data-name='beast']").locator(tid("jt-close")).click()
        panel.locator(tid("jt-empty")).wait_for(state="visible", timeout=15_000)
    except Exception:
        page.screenshot(path=str(artifact("serve-panel-failure.png")))
        if remote is not None and not remote.is_closed():
            remote.screenshot(path=str(artifact("serve-remote-failure.png")))
        log = net.home("beast") / ".cache" / "jupyter_tunnel" / "launch.log"
        # its log names its URL with the token: shown without it
        beast_log = re.sub(r"token=\w+", "token=…", log.read_text(errors="replace")[-3000:]) \
            if log.exists() else ""
        print(f"step: {step}\n{lab.log_tail()}\nbeast's launched server:\n{beast_log}")
        raise
    finally:
        context.close()
