"""The demo SSH network for Binder, as `jupyter tunnel demo` builds it, without root.

Jump host "unicorn" and "beast" (which runs a Jupyter server) are two sshd on 127.0.0.1
high ports, run as this user (``Sandbox(netns=False)``). Once they are up, their ssh config
is copied to ``DIR/ssh_config`` (the sign that the network is ready). The network is removed,
and that file with it, on SIGTERM, SIGINT or SIGHUP, or when the process that started this
one exits (binder/start starts it, then becomes the notebook server).

    python binder/demo_network.py --dir ~/.jupyter-tunnel-demo
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from jupyter_tunnel.sandbox import Sandbox, SandboxError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="~/.jupyter-tunnel-demo",
                        help="where to write ssh_config (default: %(default)s)")
    parser.add_argument("--stay", action="store_true",
                        help="keep running when the starting process exits (until a signal)")
    args = parser.parse_args()
    demo = Path(args.dir).expanduser()
    demo.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = demo / "ssh_config"
    config.unlink(missing_ok=True)

    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    parent = os.getppid()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sandbox = Sandbox(netns=False, log=log)
    try:
        sandbox.start()
    except SandboxError as exc:
        log(f"error: {exc}")
        return 1
    try:
        tmp = demo / ".ssh_config.tmp"
        tmp.write_text(sandbox.ssh_config.read_text())
        tmp.chmod(0o600)
        os.replace(tmp, config)
        for host in sandbox.hosts.values():
            log(f"{host.name}: sshd on {host.address}:{host.port}")
        log(f"demo network ready (pid {os.getpid()}); ssh config: {config}")
        while not stopping and (args.stay or os.getppid() == parent):
            time.sleep(0.5)
    finally:
        config.unlink(missing_ok=True)
        sandbox.stop()
        log("demo network removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
