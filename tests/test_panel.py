"""The Tunnels side panel in a real browser: headless chromium against JupyterLab.

A user opens the panel, types beast via unicorn, clicks Open, sees the badge turn ready,
follows the link into beast's JupyterLab, and closes the tunnel again.  The screenshot
test-artifacts/panel-ready.png shows the panel with the ready tunnel.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser import Lab, artifact
from conftest import port_is_free

from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["browser"]

PANEL = "#jupyter-tunnel-panel"


def tid(name: str) -> str:
    return f"[data-testid='{name}']"


def registry_files(runtime_dir: Path) -> list[str]:
    folder = runtime_dir / "jupyter_tunnel"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def open_panel(page: Any, lab: Lab) -> Any:
    """Load JupyterLab and click the Tunnels tab of the left side bar; the panel."""
    page.goto(lab.page_url("lab"))
    tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='jupyter-tunnel-panel']")
    tab.click()
    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    return panel


def tunnel_lab(lab_factory: Callable[..., Lab], net: Sandbox, **kwargs: Any) -> Lab:
    return lab_factory({"ServerApp": {"jpserver_extensions": {"jupyter_tunnel": True}},
                        "TunnelManager": {"ssh_config": str(net.ssh_config)}}, **kwargs)


def local_port(href: str) -> int:
    match = re.match(r"http://127\.0\.0\.1:(\d+)/", href)
    assert match, href
    return int(match.group(1))


@pytest.mark.network
def test_open_follow_and_close_with_the_mouse(lab_factory: Callable[..., Lab], browser: Any,
                                              net: Sandbox, runtime_dir: Path) -> None:
    assert net.jupyter is not None
    lab = tunnel_lab(lab_factory, net)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        panel = open_panel(page, lab)
        # the hosts of the ssh config are suggested
        options = panel.locator("datalist option")
        options.first.wait_for(state="attached")
        assert options.evaluate_all("os => os.map(o => o.value)") == [
            "unicorn", "beast", "beast-via-unicorn"]

        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        t0 = time.monotonic()
        panel.locator(tid("jt-open")).click()
        row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast']")
        row.wait_for()
        assert row.locator(tid("jt-hops")).inner_text() == "unicorn → beast"
        panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']").wait_for(
            timeout=40_000)
        print(f"ready in the panel {time.monotonic() - t0:.1f} s after the click")
        assert row.locator(tid("jt-state")).inner_text().lower() == "ready"
        assert row.locator(tid("jt-error")).inner_text() == ""
        assert "0 reconnects" in row.locator(tid("jt-meta")).inner_text()
        link = row.locator(tid("jt-link"))
        assert link.inner_text() == "Open JupyterLab" and link.get_attribute("target") == "_blank"
        assert row.locator(tid("jt-hub-note")).count() == 0  # not under a hub
        href = link.get_attribute("href") or ""
        assert f"token={net.jupyter.token}" in href
        port = local_port(href)
        page.wait_for_timeout(1200)  # one more poll: the uptime counts
        assert re.search(r"up (\d+m )?\d+s", row.locator(tid("jt-meta")).inner_text())
        panel.screenshot(path=str(artifact("panel-ready.png")))

        # the link opens beast's JupyterLab in a new tab
        with context.expect_page() as new_tab:
            link.click()
        remote = new_tab.value
        remote.set_default_timeout(60_000)
        remote.wait_for_selector("#jp-main-dock-panel")
        assert remote.url.startswith(f"http://127.0.0.1:{port}/lab")
        status = remote.evaluate("fetch('api/status').then(r => r.status)")
        assert status == 200  # beast's server, logged in through the tunnel
        remote.screenshot(path=str(artifact("panel-remote-lab.png")))
        remote.close()

        row.locator(tid("jt-close")).click()
        row.wait_for(state="detached", timeout=15_000)
        panel.locator(tid("jt-empty")).wait_for(state="visible")
        assert port_is_free(port)
        assert registry_files(runtime_dir) == []
    except Exception:
        page.screenshot(path=str(artifact("panel-failure.png")))
        print(lab.log_tail())
        raise
    finally:
        context.close()


@pytest.mark.network
def test_palette_commands_and_readable_errors(lab_factory: Callable[..., Lab], browser: Any,
                                              net: Sandbox, runtime_dir: Path) -> None:
    lab = tunnel_lab(lab_factory, net)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(60_000)
    try:
        page.goto(lab.page_url("lab"))
        page.locator(".jp-Launcher").first.wait_for()  # the app has started and restored

        def palette(command: str) -> None:
            """Run a command from the palette (Ctrl+Shift+C), as a user does."""
            search = page.locator("#command-palette .lm-CommandPalette-input")
            for _ in range(10):  # a key press while the app is still busy may get lost
                page.keyboard.press("Control+Shift+C")
                try:
                    search.wait_for(state="visible", timeout=3000)
                    break
                except Exception:
                    continue
            search.fill(command)
            page.locator(".lm-CommandPalette-item", has_text=command).first.click()

        palette("Open tunnel…")
        panel = page.locator(PANEL)
        panel.wait_for(state="visible")
        target = panel.locator(tid("jt-target"))
        page.wait_for_function("document.activeElement && "
                               "document.activeElement.dataset.testid === 'jt-target'")

        # a refused request says why, in the form
        target.fill("elsewhere")
        panel.locator(tid("jt-open")).click()
        error = panel.locator(tid("jt-form-error"))
        error.wait_for(state="visible")
        assert error.inner_text().startswith("elsewhere is not allowed: this server reaches only "
                                             "the hosts of its ssh config")

        # a failed open stays in the list with its reason until dismissed
        via = panel.locator(tid("jt-via")).first
        for _ in range(5):  # chromium's suggestion list may swallow a fill on a busy machine
            target.fill("beast")
            via.fill("unicorn")
            if (target.input_value(), via.input_value()) == ("beast", "unicorn"):
                break
        assert (target.input_value(), via.input_value()) == ("beast", "unicorn")
        panel.locator("summary").click()
        panel.locator(tid("jt-remote-port")).fill("1")
        panel.locator(tid("jt-name")).fill("wrong-port")
        target.press("Enter")
        failed = panel.locator(f"{tid('jt-tunnel')}[data-name='wrong-port'][data-state='failed']")
        failed.wait_for(timeout=40_000)
        assert "no running Jupyter server on beast listens on port 1" in failed.locator(
            tid("jt-error")).inner_text()
        assert error.inner_text() == ""
        assert failed.locator(tid("jt-close")).inner_text() == "Dismiss"
        panel.screenshot(path=str(artifact("panel-failed.png")))
        failed.locator(tid("jt-close")).click()
        failed.wait_for(state="detached")

        # Enter in the form opens; "Close all tunnels" from the palette closes
        panel.locator(tid("jt-remote-port")).fill("")
        target.press("Enter")
        ready = panel.locator(f"{tid('jt-tunnel')}[data-state='ready']")
        ready.wait_for(timeout=40_000)
        port = local_port(ready.locator(tid("jt-link")).get_attribute("href") or "")
        palette("Close all tunnels")
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for()
        assert "This closes 1 tunnel: beast." in dialog.inner_text()
        dialog.locator("button", has_text="Close all").click()
        panel.locator(tid("jt-empty")).wait_for(state="visible", timeout=15_000)
        assert port_is_free(port)
        assert registry_files(runtime_dir) == []
    except Exception:
        page.screenshot(path=str(artifact("panel-commands-failure.png")))
        print(lab.log_tail())
        raise
    finally:
        page.close()


def test_panel_says_when_the_server_extension_is_missing(lab_factory: Callable[..., Lab],
                                                          browser: Any) -> None:
    lab = lab_factory({"ServerApp": {"jpserver_extensions": {"jupyter_tunnel": False}}})
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(60_000)
    try:
        panel = open_panel(page, lab)
        missing = panel.locator(tid("jt-missing"))
        missing.wait_for(state="visible")
        assert "jupyter_tunnel server extension is not running" in missing.inner_text()
        assert not panel.locator(tid("jt-form")).is_visible()
        panel.screenshot(path=str(artifact("panel-missing.png")))
    except Exception:
        page.screenshot(path=str(artifact("panel-missing-failure.png")))
        print(lab.log_tail())
        raise
    finally:
        page.close()
