"""The engine's modules depend one way: the supervisor knows its tunnel only through what
the tunnel hands it, so it imports no tunnel module (no import circle)."""

from __future__ import annotations

import subprocess
import sys


def test_the_supervisor_does_not_import_the_tunnel() -> None:
    code = ("import sys, jupyter_tunnel.supervise\n"
            "print('jupyter_tunnel.tunnel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
