"""Under JupyterHub the panel offers no link that cannot work.

A tunnel's URL is http://127.0.0.1:PORT/ of the machine the Jupyter server runs on; under
a hub the browser is usually elsewhere.  JupyterLab marks a hub's single-user server by
``hubPrefix`` in its page config (from the server's ``tornado_settings["hub_prefix"]``):
then a ready tunnel's row shows a note instead of "Open JupyterLab", and the "Use beast's
kernels here" button stays.  Without hub settings the link is there
(tests/test_panel.py::test_open_follow_and_close_with_the_mouse, which also checks that
no note is shown).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from browser import Lab, artifact
from test_panel import open_panel, tid, tunnel_lab

from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["browser"]

HUB_SETTINGS = {"hub_prefix": "/hub/", "hub_host": "", "user": "alice"}


@pytest.mark.network
def test_under_a_hub_a_note_replaces_the_link(lab_factory: Callable[..., Lab], browser: Any,
                                               net: Sandbox) -> None:
    assert net.jupyter is not None
    lab = tunnel_lab(lab_factory, net, args=[
        f"--ServerApp.tornado_settings={json.dumps(HUB_SETTINGS)}"])
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        panel = open_panel(page, lab)
        assert page.evaluate(
            "JSON.parse(document.getElementById('jupyter-config-data').textContent)"
            ".hubPrefix") == "/hub/"
        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        panel.locator(tid("jt-open")).click()
        row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']")
        row.wait_for(timeout=40_000)
        note = row.locator(tid("jt-hub-note"))
        note.wait_for(state="visible")
        found = re.search(r"port (\d+)", row.locator(tid("jt-meta")).inner_text())
        assert found, row.locator(tid("jt-meta")).inner_text()
        port = found.group(1)
        assert note.inner_text() == (
            f"beast's JupyterLab listens on the hub's machine (127.0.0.1:{port}), not "
            "reachable from this browser: use beast's kernels here instead")
        # no link, and beast's token nowhere in the row
        assert row.locator(tid("jt-link")).count() == 0
        assert row.locator("a").count() == 0
        assert row.get_by_text("Open JupyterLab").count() == 0
        assert net.jupyter.token not in row.inner_html()
        use = row.locator(tid("jt-use-kernels"))
        use.wait_for(state="visible")
        assert use.inner_text() == "Use beast's kernels here"
        panel.screenshot(path=str(artifact("panel-hub-note.png")))
        row.locator(tid("jt-close")).click()
        panel.locator(tid("jt-empty")).wait_for(state="visible", timeout=15_000)
    except Exception:
        page.screenshot(path=str(artifact("panel-hub-failure.png")))
        print(lab.log_tail())
        raise
    finally:
        context.close()


# the notebook card, the %tunnel list table and %tunnel's printed line ---------------------
URL = "http://127.0.0.1:8123/?token=s3cr3t"
HUB_NOTE = ("beast's JupyterLab listens on the hub's machine (127.0.0.1:8123), not reachable "
            "from this browser: use beast's kernels here instead "
            "(%tunnel kernels install beast via unicorn)")


@pytest.mark.parametrize("hub", [False, True], ids=["plain", "hub"])
def test_card_table_and_printed_line_under_a_hub(hub: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel started by a hub's single-user server has JUPYTERHUB_SERVICE_PREFIX: its
    card, table and printed line show the note instead of a link; elsewhere the link."""
    import os
    from types import SimpleNamespace

    from jupyter_tunnel.magics import _ready_line
    from jupyter_tunnel.state import State
    from jupyter_tunnel.widgets import TunnelCard, render_table

    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    if hub:
        monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    info = {"name": "beast", "url": URL, "hops": ["unicorn", "beast"], "local_port": 8123}
    card = TunnelCard._link(info, State.READY)
    table = render_table([{**info, "state": "ready", "pid": os.getpid(), "owner": "kernel",
                           "created": 1}])
    tunnel = SimpleNamespace(name="beast", url=URL, hops=["unicorn", "beast"], forwards=[])
    line = _ready_line(tunnel)  # type: ignore[arg-type]
    if hub:
        assert "<a " not in card and "s3cr3t" not in card and HUB_NOTE in card
        assert "<a " not in table and "s3cr3t" not in table and "127.0.0.1:8123" in table
        assert line == f"Tunnel beast ready: {HUB_NOTE}"
        assert "http" not in line and "s3cr3t" not in line
    else:
        assert f'<a href="{URL}"' in card and "listens on the hub" not in card
        assert f'<a href="{URL}"' in table
        assert line == f"Tunnel beast ready: {URL}"
