"""Logins that ask, in the sandbox (see ``sandbox.py``): unicorn wanting a TOTP code after
the key (PAM with pam_oath), a user logging in with a password, a key behind a passphrase.

Everything made outside the sandbox folder (the link to sshd under a name of its own, its
``/etc/pam.d`` file, the password user) is recorded in :class:`Made` and removed by
:meth:`Made.undo`, only what this sandbox made.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .sandbox_procs import SandboxError, _run

#: pam_oath and oathtool, from Debian's libpam-oath and oathtool packages
PAM_OATH = ("/lib/x86_64-linux-gnu/security/pam_oath.so", "/lib/security/pam_oath.so",
            "/usr/lib/x86_64-linux-gnu/security/pam_oath.so")
STEP = 30  # seconds per TOTP time step
#: how many steps ahead of the clock a code may be given (pam_oath's window is 30 steps;
#: a used step can never be used again, and no step before it either)
AHEAD = 4
LINK_DIR = Path("/usr/local/sbin")
PAM_DIR = Path("/etc/pam.d")


def pam_stack(usersfile: Path) -> str:
    """The PAM service of the TOTP sshd: the code is the whole auth stack (the key was
    checked by sshd before), account and session always pass."""
    return ("# jupyter_tunnel sandbox: a TOTP code after the key (removed with the sandbox)\n"
            f"auth required pam_oath.so usersfile={usersfile} window=30 digits=6\n"
            "account required pam_permit.so\n"
            "session required pam_permit.so\n")


def totp_sshd_lines() -> str:
    """sshd_config lines (first value wins: put them first) for key AND code."""
    return ("UsePAM yes\nKbdInteractiveAuthentication yes\n"
            "AuthenticationMethods publickey,keyboard-interactive\n"
            # prohibit-password would also refuse keyboard-interactive to root
            "PermitRootLogin yes\n")


def password_sshd_lines(user: str) -> str:
    """A Match block (at the end of sshd_config): ``user`` logs in with a password only."""
    return (f"Match User {user}\n  AuthenticationMethods password\n"
            "  PasswordAuthentication yes\n")


def check_totp_tools() -> None:
    """Raise SandboxError saying what to install when pam_oath or oathtool is missing."""
    if os.geteuid() != 0:
        raise SandboxError("the TOTP jump host needs root (a PAM service file in /etc/pam.d)")
    if not any(Path(p).exists() for p in PAM_OATH) or shutil.which("oathtool") is None:
        raise SandboxError("the TOTP jump host needs pam_oath and oathtool: "
                           "apt-get install -y libpam-oath oathtool")


def totp_code(secret: str, step: int) -> str:
    """The 6-digit TOTP code of time step ``step`` (oathtool, RFC 6238)."""
    out = _run(["oathtool", "--totp", "-N", f"@{step * STEP}", secret]).stdout.strip()
    if not (len(out) == 6 and out.isdigit()):
        raise SandboxError(f"oathtool gave no code: {out!r}")
    return out


@dataclass
class Made:
    """What a sandbox made outside its folder, to remove at its stop."""

    paths: list[Path] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def link_sshd(self, name: str, sshd: str, usersfile: Path) -> str:
        """``/usr/local/sbin/NAME`` -> sshd and ``/etc/pam.d/NAME``: sshd started by that
        path reads that PAM service.  Refuses to take over an existing file."""
        link, service = LINK_DIR / name, PAM_DIR / name
        for path in (link, service):
            if path.exists() or path.is_symlink():
                raise SandboxError(f"{path} exists already (left by a crashed sandbox?): "
                                   "remove it if it is not in use")
        LINK_DIR.mkdir(parents=True, exist_ok=True)
        link.symlink_to(sshd)
        self.paths.append(link)
        service.write_text(pam_stack(usersfile))
        self.paths.append(service)
        return str(link)

    def add_user(self, name: str, password: str, home: Path) -> None:
        """A user with this password (hashed by chpasswd, which reads it on stdin)."""
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            raise SandboxError(f"user {name} exists already (left by a crashed sandbox?): "
                               f"remove it with: userdel {name}")
        _retry(["useradd", "-M", "-s", "/bin/sh", "-d", str(home), name])
        self.users.append(name)
        res = subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True,
                             capture_output=True, check=False)
        if res.returncode != 0:
            raise SandboxError(f"chpasswd failed for {name}: {res.stderr.strip()}")

    def undo(self) -> None:
        """Remove all of it; never raises."""
        for path in reversed(self.paths):
            with contextlib.suppress(OSError):
                path.unlink()
        for name in self.users:
            with contextlib.suppress(SandboxError):
                _retry(["userdel", name])
        self.paths, self.users = [], []


def _retry(argv: list[str], tries: int = 20) -> None:
    """useradd/userdel fail while another process holds the passwd lock: try again."""
    for i in range(tries):
        try:
            _run(argv)
            return
        except SandboxError:
            if i == tries - 1:
                raise
            time.sleep(0.1)


def new_secret() -> str:
    """A random TOTP secret, hex (what oathtool and the usersfile take)."""
    return secrets.token_hex(20)
