"""The benchmark's table: every figure, and its ratio to OpenSSH in the same run.

    python benchmarks/report.py FILE.json [--markdown]

prints the table, the goals and the failures of a run's JSON again (to refresh the docs).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

REFERENCE = "openssh"
#: the suffix of the contenders with resumable connections (``TunnelManager.resume``)
RESUME = "-resume"

#: The key of the table's CPU rows per process role (``cpu_s_per_gib:ROLE``).
ROLES = {"python": "the Python process", "ssh": "ssh (-L)", "ssh_master": "ssh master",
         "jump_helper": "ProxyJump helper (ssh -W)", "resume_helper": "resume helper (on beast)"}

#: (key, label, unit, which way is better, ratio to OpenSSH shown).  Labels may name the
#: configured sizes: {bulk} MiB, {seq} sequential and {conc} concurrent connections,
#: {many} tunnels.
ROWS: list[tuple[str, str, str, str, bool]] = [
    ("jupyter_down_mbps", "bulk download, Jupyter /files/ {bulk} MiB", "MB/s", "higher", True),
    ("forward_down_mbps", "bulk download, extra forward, {bulk} MiB", "MB/s", "higher", True),
    ("forward_up_mbps", "bulk upload, extra forward, {bulk} MiB", "MB/s", "higher", True),
    ("latency_idle_p50_ms", "100 B round trip p50, idle", "ms", "lower", True),
    ("latency_idle_p99_ms", "100 B round trip p99, idle", "ms", "lower", True),
    ("latency_busy_p50_ms", "100 B round trip p50, download running", "ms", "lower", True),
    ("latency_busy_p99_ms", "100 B round trip p99, download running", "ms", "lower", True),
    ("busy_stream_mbps", "  the download meanwhile", "MB/s", "higher", False),
    ("sequential_s", "{seq} sequential new connections (HTTP), total", "s", "lower", True),
    ("sequential_p50_ms", "  one request on a new connection, p50", "ms", "lower", True),
    ("sequential_errors", "  errors", "", "lower", False),
    ("concurrent_slowest_connect_ms", "{conc} concurrent connections: slowest connect", "ms",
     "lower", True),
    ("concurrent_slowest_fetch_ms", "{conc} concurrent connections: slowest 1 MiB fetch", "ms",
     "lower", True),
    ("concurrent_errors", "{conc} concurrent connections: errors", "", "lower", False),
    ("ready_cold_s", "time to ready, cold", "s", "lower", True),
    ("ready_warm_s", "time to ready, same hosts already up", "s", "lower", True),
    ("cpu_s_per_gib", "CPU seconds per GiB (forwarding processes)", "s", "lower", True),
    *[(f"cpu_s_per_gib:{role}", f"  of which {label}", "s", "lower", False)
      for role, label in ROLES.items()],
    ("rss_1_mb", "memory, 1 fresh tunnel, RSS", "MB", "lower", True),
    ("pss_1_mb", "memory, 1 fresh tunnel, PSS", "MB", "lower", True),
    ("rss_after_traffic_mb", "memory, 1 tunnel after all the traffic, RSS", "MB", "lower", True),
    ("rss_growth_mb", "  growth over the traffic, RSS", "MB", "lower", True),
    ("rss_helper_mb", "memory, resume helper on beast after all the traffic, RSS", "MB", "lower",
     False),
    ("rss_detached_mb", "memory, detached CLI process (1 tunnel), RSS", "MB", "lower", False),
    ("pss_detached_mb", "memory, detached CLI process (1 tunnel), PSS", "MB", "lower", False),
    ("pss_n_mb", "memory, {many} tunnels, PSS", "MB", "lower", True),
    ("rss_n_mb", "memory, {many} tunnels, RSS summed over processes", "MB", "lower", False),
    ("pss_per_tunnel_mb", "  each further tunnel, PSS", "MB", "lower", True),
    ("rss_per_tunnel_mb", "  each further tunnel, RSS summed", "MB", "lower", False),
]


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Medians of every contender's samples."""
    out: dict[str, dict[str, float]] = {}
    for contender, metrics in samples.items():
        out[contender] = {}
        for key, values in metrics.items():
            value = median(values)
            if value is not None:
                out[contender][key] = value
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def label_of(label: str, cfg: dict[str, Any]) -> str:
    """A row's label with the configured sizes filled in."""
    return label.format(bulk=cfg.get("bulk_mib", "?"), seq=cfg.get("sequential", "?"),
                        conc=cfg.get("concurrent", "?"), many=cfg.get("many", "?"))


def table(results: dict[str, dict[str, float]], contenders: list[str], cfg: dict[str, Any],
          markdown: bool = False) -> str:
    """The table as text (or Markdown): a row per figure, a column per contender, each
    figure with its ratio to OpenSSH where the row compares like with like."""
    ref = results.get(REFERENCE, {})
    header = ["figure", *contenders]
    rows: list[list[str]] = []
    for key, label, unit, better, show_ratio in ROWS:
        if not any(key in results.get(c, {}) for c in contenders):
            continue
        label = label_of(label, cfg)
        cells = [f"{label} ({unit}, {better} is better)" if unit else label]
        for contender in contenders:
            value = results.get(contender, {}).get(key)
            cell = _fmt(value)
            base = ref.get(key)
            if value is not None and base and contender != REFERENCE and show_ratio:
                cell += f" ({value / base:.2f}x)"
            cells.append(cell)
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def failures(results: dict[str, dict[str, float]], contenders: list[str]) -> list[str]:
    """What makes the run's figures untrustworthy: errors (a failed request is fast), a
    tunnel whose forwarding processes used no CPU or memory (not the processes that carry
    it), a figure missing."""
    found = []
    for contender in contenders:
        res = results.get(contender, {})
        for key in ("sequential_errors", "concurrent_errors"):
            if res.get(key, 0) > 0:
                found.append(f"{contender}: {key} = {res[key]:g}")
        needed = ["jupyter_down_mbps", "latency_busy_p50_ms", "sequential_s"]
        if contender != "ceiling":
            needed += ["cpu_s_per_gib", "rss_1_mb", "pss_1_mb", "ready_cold_s"]
        if contender.endswith(RESUME):
            needed += ["rss_helper_mb"]
        for key in needed:
            if key not in res:
                found.append(f"{contender}: no {key}")
            elif key.startswith(("cpu", "rss", "pss")) and res[key] <= 0:
                found.append(f"{contender}: {key} = {res[key]:g} (not the right processes?)")
    return found


Check = Callable[[float], bool]


def _at_most(limit: float) -> Check:
    return lambda value: value <= limit


def _at_least(limit: float) -> Check:
    return lambda value: value >= limit


def goals(results: dict[str, dict[str, float]], cfg: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    """The issue's goals, met or not, for each jupyter_tunnel backend (ratios to OpenSSH),
    plain and with resumable connections (issue 11: bulk >= 0.8x, p50 round trip <= 1.3x,
    a request on a new connection <= 1.5x).  The memory goals use RSS (the larger figure,
    and for one process the exact one)."""
    ref = results.get(REFERENCE, {})
    conc = (cfg or {}).get("concurrent", 50)
    checks: list[dict[str, Any]] = []

    def ratio(res: dict[str, float], key: str) -> float | None:
        return res[key] / ref[key] if key in res and ref.get(key) else None

    wanted = {
        "jt-openssh": {"bulk": 1.0, "p50": 1.1, "p99_busy": 1.0},
        "jt-sshtunnel": {"bulk": 0.5, "p50": 1.5, "p99_busy": 1.5},
        "jt-openssh" + RESUME: {"bulk": 0.8, "p50": 1.3, "new": 1.5},
        "jt-sshtunnel" + RESUME: {"bulk": 0.8, "p50": 1.3, "new": 1.5},
    }
    for contender, limits in wanted.items():
        res = results.get(contender)
        if not res:
            continue
        bulk = [r for r in (ratio(res, "jupyter_down_mbps"), ratio(res, "forward_down_mbps"),
                            ratio(res, "forward_up_mbps")) if r is not None]
        items: list[tuple[str, float | None, Check]] = [
            (f"bulk >= {limits['bulk']:.1f}x OpenSSH", min(bulk) if bulk else None,
             _at_least(limits["bulk"])),
            (f"latency p50 <= {limits['p50']:.1f}x", ratio(res, "latency_idle_p50_ms"),
             _at_most(limits["p50"])),
        ]
        if "p99_busy" in limits:
            items += [(f"p99 while downloading <= {limits['p99_busy']:.1f}x",
                       ratio(res, "latency_busy_p99_ms"), _at_most(limits["p99_busy"]))]
        if "new" in limits:
            items += [(f"new connection p50 <= {limits['new']:.1f}x",
                       ratio(res, "sequential_p50_ms"), _at_most(limits["new"]))]
        items += [(f"no error with {conc} at once", res.get("concurrent_errors"), _at_most(0))]
        if not contender.endswith(RESUME):
            items += [
                (f"no connect over 100 ms with {conc} at once (ms)",
                 res.get("concurrent_slowest_connect_ms"), _at_most(100)),
                ("detached process <= 80 MB (RSS)", res.get("rss_detached_mb"), _at_most(80)),
                ("each further tunnel <= 5 MB (RSS)", res.get("rss_per_tunnel_mb"),
                 _at_most(5)),
            ]
        if contender == "jt-openssh":
            items += [("ready cold <= 1.5 s", res.get("ready_cold_s"), _at_most(1.5)),
                      ("ready warm <= 0.3 s", res.get("ready_warm_s"), _at_most(0.3))]
        for goal, value, test in items:
            if value is not None:
                checks.append({"backend": contender, "goal": goal, "value": round(value, 3),
                               "met": bool(test(value))})
    return checks


def resume_cost(results: dict[str, dict[str, float]]) -> list[str]:
    """What resumable connections cost: each resume contender's figures against the same
    backend's plain ones in the same run (resume / plain)."""
    keys = [("jupyter_down_mbps", "Jupyter download"), ("forward_down_mbps", "download"),
            ("forward_up_mbps", "upload"), ("latency_idle_p50_ms", "round trip p50"),
            ("latency_busy_p99_ms", "p99 while downloading"),
            ("sequential_p50_ms", "new connection p50"), ("cpu_s_per_gib", "CPU per GiB"),
            ("ready_cold_s", "ready cold")]
    lines = []
    for contender, res in results.items():
        plain = results.get(contender.removesuffix(RESUME), {})
        if not contender.endswith(RESUME) or not plain:
            continue
        parts = [f"{label} {res[k] / plain[k]:.2f}x" for k, label in keys
                 if res.get(k) is not None and plain.get(k)]
        lines.append(f"{contender} / {contender.removesuffix(RESUME)}: {', '.join(parts)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="print a benchmark run's table again")
    parser.add_argument("json", help="a file written by run.py --json")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    meta = data["meta"]
    print(f"{meta['date']}  {meta.get('commit')}  {meta['cpu']}, {meta['cores']} cores, "
          f"load {meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after")
    print(table(data["results"], meta["contenders"], meta["config"], markdown=args.markdown))
    for check in goals(data["results"], meta["config"]):
        print(f"  {'met   ' if check['met'] else 'MISSED'} {check['backend']}: {check['goal']} "
              f"(got {check['value']})")
    for line in resume_cost(data["results"]):
        print(f"  {line}")
    for problem in failures(data["results"], meta["contenders"]):
        print(f"  FAILED {problem}")


if __name__ == "__main__":
    main()
