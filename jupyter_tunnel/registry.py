"""The on-disk record of every tunnel of this user, whichever process owns it.

One JSON file per tunnel in a 0700 folder under the Jupyter runtime dir, each
0600 and replaced atomically; a lock file serialises read-modify-write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import procinfo
from .errors import ConfigError, TunnelExists
from .spec import check_name

FOLDER = "jupyter_tunnel"


def default_dir() -> Path:
    """``<jupyter runtime dir>/jupyter_tunnel``."""
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / FOLDER


class Registry:
    """A folder of tunnel records."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_dir()

    def _ensure(self) -> None:
        """Make the folder if it is missing, and check it.  Another process may remove it at
        any moment (with its last record, under the lock this one may not hold yet)."""
        for _ in range(100):
            try:
                if not self.path.is_symlink():
                    # exists, but no folder: _check says what; a folder gone meanwhile
                    # (mkdir's exist_ok looks twice): again
                    with contextlib.suppress(FileExistsError):
                        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._check()
                return
            except FileNotFoundError:
                continue
        raise ConfigError(f"cannot make the registry folder {self.path}: it keeps vanishing")

    def _check(self) -> None:
        info = self.path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise ConfigError(f"registry folder {self.path} is a symbolic link; jupyter_tunnel "
                              "keeps tunnels only in a real folder of yours: remove the link")
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"registry folder {self.path} is not a folder; remove it")
        if info.st_uid != os.getuid():
            raise ConfigError(f"registry folder {self.path} belongs to another user; remove it")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(self.path, 0o700)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (between processes and threads).

        Whoever holds it when the last record goes removes the lock file and the folder, so
        nothing is left once no tunnel is recorded; a waiter that then gets the lock of the
        removed file takes a new one."""
        fd = self._acquire()
        try:
            yield
        finally:
            try:
                if {entry.name for entry in self.path.iterdir()} == {".lock"}:
                    (self.path / ".lock").unlink()
                    self.path.rmdir()
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _acquire(self) -> int:
        lock = self.path / ".lock"
        for _ in range(100):
            self._ensure()
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:  # the folder went with its last record just now
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)
        raise ConfigError(f"cannot lock the registry folder {self.path}: it keeps vanishing")

    def _file(self, name: str) -> Path:
        return self.path / f"{check_name(name)}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        """The record of ``name``, or None."""
        return _load(self._file(name))

    def write(self, record: dict[str, Any]) -> None:
        """Write (replace) the record of ``record['name']`` atomically, mode 0600."""
        self._ensure()
        target = self._file(record["name"])
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def update(self, name: str, owner_pid: int, **changes: Any) -> bool:
        """Change fields of a record this owner holds; False if it is gone or not ours."""
        with self.lock():
            record = self.read(name)
            if record is None or record.get("pid") != owner_pid:
                return False
            record.update(changes)
            self.write(record)
            return True

    def save(self, record: dict[str, Any], owner_pid: int) -> bool:
        """Replace the record of ``record['name']`` if ``owner_pid`` still holds it."""
        with self.lock():
            old = self.read(record["name"])
            if old is not None and old.get("pid") != owner_pid:
                return False
            self.write(record)
            return True

    def claim(self, record: dict[str, Any], *, rename: bool = False) -> str:
        """Create the record, unless a live tunnel already holds the name; with ``rename``,
        take the next free name instead (``beast-2``…).  Returns the name used."""
        with self.lock():
            name = str(record["name"])
            if rename:
                name = self.unique_name(name)
            elif self._held(name):
                old = self.read(name) or {}
                raise TunnelExists(
                    f"a tunnel named {name!r} is already open (pid {old.get('pid')}); "
                    "close it first or choose another --name"
                )
            self.write({**record, "name": name})
            return name

    def _held(self, name: str) -> bool:
        """Whether a live tunnel holds the name (a record kept to say why one failed does not)."""
        old = self.read(name)
        return old is not None and old.get("state") != "failed" and \
            procinfo.is_alive(old.get("pid", 0), old.get("started"))

    def unique_name(self, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``… whichever no live tunnel holds."""
        for n in range(1, 1000):
            name = base if n == 1 else f"{base[:58]}-{n}"
            if not self._held(name):
                return name
        raise TunnelExists(f"too many tunnels named {base}-N")

    def remove(self, name: str, owner_pid: int | None = None) -> bool:
        """Remove the record (only if ``owner_pid`` holds it, when given)."""
        with self.lock():
            record = self.read(name)
            if record is None:
                return False
            if owner_pid is not None and record.get("pid") != owner_pid:
                return False
            with contextlib.suppress(FileNotFoundError):
                self._file(name).unlink()
            return True

    def remove_orphan(self, name: str) -> bool:
        """Remove the record if its owner is (still) gone; False if it is alive or missing."""
        with self.lock():
            record = self.read(name)
            if record is None or procinfo.is_alive(record.get("pid", 0), record.get("started")):
                return False
            with contextlib.suppress(FileNotFoundError):
                self._file(name).unlink()
            return True

    def remove_debris(self, age: float = 60.0) -> list[tuple[str, str]]:
        """Remove unreadable records and temp files of writers that died mid-write."""
        if not self.path.exists():
            return []
        gone: list[tuple[str, str]] = []
        with self.lock():
            now = time.time()
            for file in self.path.iterdir():
                why = ""
                if file.name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        if now - file.lstat().st_mtime > age:
                            why = "a temporary file left by a writer that died"
                elif file.suffix == ".json" and _load(file) is None:
                    with contextlib.suppress(OSError):
                        if now - file.lstat().st_mtime > age:
                            why = "an unreadable record"
                if why:
                    with contextlib.suppress(OSError):
                        file.unlink()
                        gone.append((file.name, why))
        return gone

    def all(self) -> list[dict[str, Any]]:
        """Every readable record, with ``orphaned`` set where the owner is gone."""
        if not self.path.is_symlink() and not self.path.exists():
            return []
        self._check()
        records = []
        for file in sorted(self.path.glob("*.json")):
            record = _load(file)
            if record is None or record.get("name") != file.stem:
                continue
            record["orphaned"] = not procinfo.is_alive(record.get("pid", 0), record.get("started"))
            records.append(record)
        return records


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
