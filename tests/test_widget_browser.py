"""The live card in JupyterLab, in headless chromium (Playwright): `%tunnel beast via unicorn`
turns ready, its link opens the remote JupyterLab, Close closes the tunnel.

Uses the shared browser helpers (tests/browser.py); screenshots land in test-artifacts/widget/.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from browser import Lab, artifact
from conftest import port_is_free
from test_magics import registry_files

from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network
pytest_plugins = ["browser"]


def write_notebook(path: Path, ssh_config: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        f"%load_ext jupyter_tunnel\n%config TunnelManager.ssh_config = {str(ssh_config)!r}"),
        nbformat.v4.new_code_cell("%tunnel beast via unicorn"),
        nbformat.v4.new_code_cell("%tunnel list")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))


def test_card_in_jupyterlab_turns_ready_link_works_close_closes(
        lab_factory: Callable[..., Lab], browser: Any, net: Sandbox, runtime_dir: Path,
        tmp_path: Path) -> None:
    (tmp_path / "ipython").mkdir()
    lab = lab_factory(env={"IPYTHONDIR": str(tmp_path / "ipython")})
    write_notebook(lab.root / "card.ipynb", net.ssh_config)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(lab.page_url("lab/tree/card.ipynb"))
    # the kernel is connected and idle (the status bar says so only once it is)
    try:
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    except Exception:
        page.screenshot(path=str(artifact("widget/failed-waiting-for-idle-kernel.png")))
        print(lab.log_tail())
        raise
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("[data-command='runmenu:run-all']").click()

    card = page.locator(".jt-card")
    ready = card.locator(".jt-state [data-state='ready']")
    try:
        ready.wait_for()
    except Exception:
        page.screenshot(path=str(artifact("widget/failed-waiting-for-ready.png")))
        print(lab.log_tail())
        raise
    assert ready.inner_text() == "ready"
    page.wait_for_timeout(1500)  # let the ticker redraw the counters once
    card.screenshot(path=str(artifact("widget/card-ready.png")))
    page.screenshot(path=str(artifact("widget/lab-card-ready.png")))
    assert "✓ unicorn" in card.locator(".jt-hops").inner_text()
    table = page.locator(".jt-list")
    table.locator("[data-state='ready']").wait_for()
    assert "this kernel" in table.inner_text()
    table.screenshot(path=str(artifact("widget/list.png")))
    assert "up " in card.locator(".jt-stats").inner_text()

    link = card.locator(".jt-url a")
    href = link.get_attribute("href")
    assert href is not None and href.startswith("http://127.0.0.1:") and "token=" in href
    port = urllib.parse.urlsplit(href).port
    assert port is not None and registry_files(runtime_dir) == ["beast.json"]

    # the link opens beast's JupyterLab through the tunnel, in a new tab
    with page.context.expect_page() as opened:
        link.click()
    remote = opened.value
    remote.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    assert remote.url.startswith(f"http://127.0.0.1:{port}/lab")
    remote.screenshot(path=str(artifact("widget/remote-lab.png")))
    remote.close()

    card.locator(".jt-close").click()
    card.locator(".jt-state [data-state='closed']").wait_for()
    card.screenshot(path=str(artifact("widget/card-closed.png")))
    deadline = time.monotonic() + 10  # the badge may read closed before teardown is done
    while not (port_is_free(port) and registry_files(runtime_dir) == []):
        assert time.monotonic() < deadline, "closed, but the port or the record is left"
        time.sleep(0.1)
    page.close()

