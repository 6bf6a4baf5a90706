"""footprint.py's report (pure): each step's deltas, the medians, the Markdown tables."""

from __future__ import annotations

from typing import Any

from footprint_procs import HOSTS
from report import summarize as medians

STEPS = ["tunnel 1", "tunnel 2", "kernel 1", "kernel 2"]
#: the number of users the table's last row multiplies one user's total by
USERS = 100

#: (key, label) of the memory table: per host processes, PSS, RSS; the worker's growth
MEMORY_COLUMNS: list[tuple[str, str]] = [
    ("here_processes", "here: new processes"),
    ("here_pss_mb", "here: their PSS MB"),
    ("here_rss_mb", "here: their RSS MB"),
    ("python_pss_mb", "here: Python process growth, PSS MB"),
    ("python_rss_mb", "here: Python growth, RSS MB"),
    ("unicorn_processes", "unicorn: processes"),
    ("unicorn_pss_mb", "unicorn: PSS MB"),
    ("unicorn_rss_mb", "unicorn: RSS MB"),
    ("beast_processes", "beast: processes"),
    ("beast_pss_mb", "beast: PSS MB"),
    ("beast_rss_mb", "beast: RSS MB"),
]
#: (key, label) of the sshd table
SSHD_COLUMNS: list[tuple[str, str]] = [
    ("unicorn_tcp", "unicorn: TCP connections into sshd"),
    ("unicorn_sshd", "unicorn: sshd processes"),
    ("unicorn_logins", "unicorn: logins"),
    ("unicorn_sessions_started", "unicorn: sessions started"),
    ("unicorn_sessions", "unicorn: sessions running"),
    ("beast_tcp", "beast: TCP connections into sshd"),
    ("beast_sshd", "beast: sshd processes"),
    ("beast_logins", "beast: logins"),
    ("beast_sessions_started", "beast: sessions started"),
    ("beast_sessions", "beast: sessions running"),
]
FIGURES = [key for key, _ in MEMORY_COLUMNS + SSHD_COLUMNS]


def deltas(snaps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """From snapshots [baseline, after step 1, ..., after step 4]: {step: {figure: value}},
    each step against the previous one, and ``total`` (after the last against the
    baseline).  A snapshot holds cumulative figures (see
    :meth:`footprint_procs.Census.snapshot`)."""
    out: dict[str, dict[str, float]] = {}
    pairs = [(STEPS[i], snaps[i], snaps[i + 1]) for i in range(len(snaps) - 1)]
    if len(snaps) > 1:
        pairs.append(("total", snaps[0], snaps[-1]))
    for name, before, after in pairs:
        out[name] = {k: round(after["figures"][k] - before["figures"][k], 3)
                     for k in FIGURES if k in after["figures"] and k in before["figures"]}
    return out


def summarize(samples: dict[str, dict[str, dict[str, list[float]]]]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """The median of each backend's samples of each step's figures."""
    return {b: medians(steps) for b, steps in samples.items()}


def roles_table(roles: dict[str, dict[str, dict[str, float]]], backends: list[str]) -> str:
    """Markdown: what one user's processes are after the last step (medians), per host and
    role, each backend."""
    present = [b for b in backends if b in roles]
    names = sorted({name for b in present for name in roles[b]},
                   key=lambda n: (HOSTS.index(n.split(":")[0]), n))
    lines = ["| host: process | backend | processes | PSS MB | RSS MB | PSS MB each |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in names:
        for backend in present:
            got = roles[backend].get(name)
            if not got:
                continue
            each = got["pss_mb"] / got["processes"] if got["processes"] else None
            lines.append(f"| {name} | {backend} | {_fmt(got['processes'], 'n')} | "
                         f"{_fmt(got['pss_mb'], 'pss_mb')} | {_fmt(got['rss_mb'], 'rss_mb')} | "
                         f"{_fmt(each, 'pss_mb')} |")
    return "\n".join(lines)


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if not key.endswith("_mb"):
        return f"{value:g}" if value == int(value) else f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def table(results: dict[str, dict[str, dict[str, float]]], backends: list[str]) -> str:
    """Two Markdown tables (memory and processes per host; sshd), rows: step x backend, then
    the total of one user and that total times USERS."""
    present = [b for b in backends if b in results]
    rows = [*STEPS, "total", "users"]
    text = []
    for columns in (MEMORY_COLUMNS, SSHD_COLUMNS):
        lines = ["| step | backend | " + " | ".join(label for _, label in columns) + " |",
                 "| --- | --- | " + " | ".join("---:" for _ in columns) + " |"]
        for row in rows:
            for backend in present:
                source = results[backend].get("total" if row == "users" else row, {})
                factor = USERS if row == "users" else 1
                label = {"total": "one user (2 tunnels, 2 kernels)",
                         "users": f"{USERS} users (x{USERS})"}.get(row, row)
                cells = [_fmt(source[k] * factor if k in source else None, k)
                         for k, _ in columns]
                lines.append(f"| {label} | {backend} | " + " | ".join(cells) + " |")
        text.append("\n".join(lines))
    return "\n\n".join(text)
