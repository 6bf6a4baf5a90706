"""The JupyterLab panel of a resumable tunnel (``TunnelManager.resume``): its row says that
connections resume, and while the link to unicorn is cut it shows the download it holds;
the download then completes."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from browser import Lab
from conftest import need
from test_panel import local_port, open_panel, tid

from jupyter_tunnel.sandbox import Sandbox

pytest_plugins = ["browser"]
pytestmark = pytest.mark.network

SIZE = 64 << 20


@pytest.mark.network
def test_the_panel_shows_what_an_outage_holds(lab_factory: Callable[..., Lab], browser: Any,
                                              net: Sandbox) -> None:
    if not net.netns:
        need("cutting the link needs the namespace network")
    assert net.jupyter is not None
    (net.jupyter.root_dir / "big.bin").write_bytes(b"\x5a" * SIZE)
    lab = lab_factory({"ServerApp": {"jpserver_extensions": {"jupyter_tunnel": True}},
                       "TunnelManager": {"ssh_config": str(net.ssh_config), "resume": True,
                                         "keepalive_interval": 1, "keepalive_count_max": 2}})
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        panel = open_panel(page, lab)
        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        panel.locator(tid("jt-open")).click()
        ready = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']")
        ready.wait_for(timeout=40_000)
        meta = ready.locator(tid("jt-meta"))
        assert "connections resume after an outage" in meta.inner_text(), lab.log_tail(20000)
        port = local_port(ready.locator(tid("jt-link")).get_attribute("href") or "")

        got, ended = bytearray(), threading.Event()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/files/big.bin",
                                         headers={"Authorization": f"token {net.jupyter.token}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        response = opener.open(request, timeout=120)
        got += response.read(2 << 20)  # under way, read at a browser's pace meanwhile

        def read_rest() -> None:
            while chunk := response.read(1 << 20):
                got.extend(chunk)
                time.sleep(0.01)
            ended.set()

        net.cut_link()
        try:
            held = panel.locator(f"{tid('jt-tunnel')}[data-name='beast']"
                                 f"[data-state='reconnecting'] {tid('jt-meta')}")
            held.filter(has_text="1 connection held").wait_for(timeout=30_000)
            assert " buffered" in held.inner_text()  # (what beast holds is not counted here)
        finally:
            net.restore_link()
        reader = threading.Thread(target=read_rest)
        reader.start()
        reader.join(120)
        assert ended.is_set() and len(got) == SIZE and got.count(b"\x5a") == SIZE
        ready.wait_for(timeout=30_000)
        assert "connections resume after an outage" in meta.inner_text()
        panel.locator(f"{tid('jt-tunnel')}[data-name='beast'] {tid('jt-close')}").click()
        panel.locator(f"{tid('jt-tunnel')}[data-name='beast']").wait_for(state="detached")
    finally:
        context.close()
        (net.jupyter.root_dir / "big.bin").unlink(missing_ok=True)
