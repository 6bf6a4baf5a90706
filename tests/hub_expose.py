"""Run a command where other users can reach the given paths (run as root, in a private mount
namespace: ``unshare --mount --propagation private python hub_expose.py SAVE PATH... -- CMD``).

A hub's users run this venv's Python as themselves; a folder on the way that they may not
pass (``/root`` is 0700, a CI clone may sit in a 0700 temporary folder) would stop them.
Here each such folder is covered by an empty tmpfs holding bind mounts of just the entries
on the way to the given paths, so nothing else of it shows.  The real system is unchanged:
the mounts live only in this namespace, which the command's processes share.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def passable(folder: Path) -> bool:
    return bool(folder.stat().st_mode & stat.S_IXOTH)


def expose(paths: list[Path], save: Path) -> None:
    covered: dict[Path, Path] = {}  # folder covered by our tmpfs -> where its content shows
    for target in paths:
        folder = Path("/")
        for part in target.relative_to("/").parts:
            entry = folder / part
            if folder in covered and not os.path.lexists(entry):
                bind(covered[folder] / part, entry)
            elif folder not in covered and not passable(folder):
                keep = save / str(len(covered))
                keep.mkdir(parents=True)
                subprocess.run(["mount", "--bind", str(folder), str(keep)], check=True)
                subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(folder)],
                               check=True)
                covered[folder] = keep
                bind(keep / part, entry)
            folder = entry


def bind(source: Path, entry: Path) -> None:
    if source.is_dir():
        entry.mkdir()
    else:
        entry.touch()
    subprocess.run(["mount", "--bind", str(source), str(entry)], check=True)


def main() -> None:
    args = sys.argv[1:]
    cut = args.index("--")
    save, *paths = args[:cut]
    expose([Path(p) for p in paths], Path(save))
    os.execvp(args[cut + 1], args[cut + 1:])


if __name__ == "__main__":
    main()
