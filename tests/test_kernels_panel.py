"""Remote kernels from the Tunnels panel, in a real browser (headless chromium, JupyterLab).

A user opens beast via unicorn in the panel, clicks "Use beast's kernels here", sees
"Python 3 (ipykernel) on beast" appear in the launcher, opens a notebook on it and runs a
cell: it runs in beast's network namespace, not here.  Remove takes the kernelspec out of
the launcher again; the notebook's kernel is shut down and nothing is left on beast.
Screenshots: test-artifacts/kernels-panel-*.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser import Lab, artifact
from test_panel import open_panel, registry_files, tid

from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["browser"]

DISPLAY = "Python 3 (ipykernel) on beast"


def beast_kernel_files(net: Sandbox) -> list[str]:
    folder = net.home("beast") / ".cache" / "jupyter_tunnel" / "kernels"
    return sorted(os.listdir(folder)) if folder.exists() else []


def lab_api(lab: Lab, method: str, path: str) -> Any:
    """A request to the lab's own REST API with its token."""
    request = urllib.request.Request(f"{lab.url}{path}", method=method,
                                     headers={"Authorization": f"token {lab.token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        body = response.read()
    return json.loads(body) if body else None


def shut_down_sessions(lab: Lab) -> None:
    """Shut down every notebook's kernel (DELETE api/sessions/ID ends the kernel too)."""
    for session in lab_api(lab, "GET", "api/sessions"):
        lab_api(lab, "DELETE", f"api/sessions/{session['id']}")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.network
def test_use_beasts_kernels_from_the_panel(lab_factory: Callable[..., Lab], browser: Any,
                                           net: Sandbox, runtime_dir: Path,
                                           tmp_path: Path) -> None:
    data_dir = tmp_path / "jupyter-data"  # the lab's kernelspecs land here, not in ~
    lab = lab_factory({"ServerApp": {"jpserver_extensions": {"jupyter_tunnel": True}},
                       "TunnelManager": {"ssh_config": str(net.ssh_config)}},
                      env={"JUPYTER_DATA_DIR": str(data_dir)})
    beast_ns = net.run_in("beast", ["readlink", "/proc/self/ns/net"], capture_output=True,
                          text=True).stdout.strip()
    assert beast_ns and beast_ns != os.readlink("/proc/self/ns/net")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    step = "open the panel"
    try:
        panel = open_panel(page, lab)
        page.locator(".jp-Launcher").first.wait_for()
        cards = page.locator(".jp-LauncherCard[data-category='Notebook']", has_text=DISPLAY)
        assert cards.count() == 0

        step = "open beast via unicorn"
        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        panel.locator(tid("jt-open")).click()
        row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast']")
        panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']").wait_for(
            timeout=40_000)

        step = "use beast's kernels"
        use = row.locator(tid("jt-use-kernels"))
        use.wait_for(state="visible")
        assert use.inner_text() == "Use beast's kernels here"
        status = row.locator(tid("jt-kernels-status"))
        use.click()
        # the click handler writes the progress at once; the install takes a second or two
        assert status.inner_text() == "Installing beast's kernels…"
        assert use.is_disabled()
        page.wait_for_function(
            "el => el.textContent.startsWith('Installed ')", arg=status.element_handle(),
            timeout=60_000)
        assert status.inner_text() == (f"Installed {DISPLAY}: in the launcher and the "
                                       "kernel picker.")
        assert row.locator(tid("jt-kernels-error")).inner_text() == ""
        assert not use.is_disabled()
        installed = row.locator(tid("jt-kernelspec"))
        installed.first.wait_for()
        assert installed.count() == 1
        assert installed.first.get_attribute("data-name") == "beast-python3"
        assert installed.first.locator(tid("jt-kernel-name")).inner_text() == DISPLAY
        assert (data_dir / "kernels" / "beast-python3" / "kernel.json").exists()
        # in the launcher at once (the kernelspecs were reloaded, no page reload needed)
        cards.first.wait_for(timeout=10_000)
        page.screenshot(path=str(artifact("kernels-panel-installed.png")))

        step = "a notebook on beast's kernel"
        cards.first.click()
        # connected and idle: the status bar says so only once the kernel answered
        page.locator(".jp-StatusBar-TextItem", has_text=f"{DISPLAY} | Idle").first.wait_for(
            timeout=90_000)
        cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
        cell.click()
        page.keyboard.type("import os; print(os.readlink('/proc/self/ns/net'))")
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-Notebook .jp-OutputArea-output").first
        output.wait_for(timeout=60_000)
        assert output.inner_text().strip() == beast_ns
        page.screenshot(path=str(artifact("kernels-panel-notebook.png")))

        step = "remove it"
        # a launcher again, beside the notebook (the tab bar's +)
        page.locator("#jp-main-dock-panel .lm-TabBar-addButton").first.click()
        cards.first.wait_for(timeout=15_000)
        installed.first.locator(tid("jt-kernel-remove")).click()
        installed.first.wait_for(state="detached", timeout=15_000)
        assert status.inner_text() == f"Removed {DISPLAY}."
        wait_until(lambda: cards.count() == 0, 15, "the kernel stays in the launcher")
        assert page.locator(".jp-LauncherCard[data-category='Notebook']").count() >= 1
        assert not (data_dir / "kernels" / "beast-python3").exists()
        page.screenshot(path=str(artifact("kernels-panel-removed.png")))

        step = "shut the kernel down"
        shut_down_sessions(lab)
        wait_until(lambda: beast_kernel_files(net) == [], 30,
                   f"kernel files left on beast: {beast_kernel_files(net)}")

        step = "close the tunnel"
        row.locator(tid("jt-close")).click()
        row.wait_for(state="detached", timeout=15_000)
        wait_until(lambda: registry_files(runtime_dir) == [], 20,
                   f"tunnels left: {registry_files(runtime_dir)}")
    except Exception:
        page.screenshot(path=str(artifact("kernels-panel-failure.png")))
        print(f"failed at: {step}\n{lab.log_tail()}")
        raise
    finally:
        with contextlib.suppress(OSError):
            shut_down_sessions(lab)
        page.close()
    assert beast_kernel_files(net) == []
