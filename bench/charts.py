"""The report's PNG charts (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

__all__ = ["draw_all"]

COLOURS = {
    "tessera": "#2b6cb0",
    "peer": "#c05621",
    "ceiling": "#a0aec0",
}
REPLICA_COLOURS = ["#2b6cb0", "#38a169", "#d69e2e", "#9f7aea", "#e53e3e", "#319795"]


def _validation_throughput(validation: dict[str, Any], path: Path) -> None:
    scenarios = [
        (key, value)
        for key, value in validation["scenarios"].items()
        if value["kind"] not in ("ceiling", "compiled")
    ]
    labels = [value["label"] for _, value in scenarios]
    rates = [value["rate"] for _, value in scenarios]
    colours = [COLOURS[value["kind"]] for _, value in scenarios]
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(labels) + 1.5))
    bars = axis.barh(labels, rates, color=colours)
    axis.invert_yaxis()
    for bar, (_, value) in zip(bars, scenarios, strict=True):
        axis.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f"  {value['rate']:,.0f}/s  ({value['ratio_to_baseline']:.0%} req/s, "
            f"{value['cost_ratio_to_baseline']:.0%} CPU)",
            va="center",
            fontsize=8,
        )
    axis.set_xlabel("requests per second, one replica on one core (median)")
    axis.set_title("1 and 4: validation cost per request (vs the no-auth baseline)")
    axis.set_xlim(0, max(rates) * 1.6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput_by_row(rows: dict[str, Any], path: Path) -> None:
    entries = list(rows["rows"].values())
    labels = [f"{entry['row']}: {entry['label']}" for entry in entries]
    ok = [entry["capacity"]["ok_rate"] for entry in entries]
    other = [entry["capacity"]["rate"] - entry["capacity"]["ok_rate"] for entry in entries]
    figure, axis = plt.subplots(figsize=(10, 0.6 * len(labels) + 1.5))
    axis.barh(labels, ok, color="#2b6cb0", label="authenticated 2xx")
    axis.barh(labels, other, left=ok, color="#e2a3a3", label="refused (401) or failed")
    axis.invert_yaxis()
    for index, entry in enumerate(entries):
        capacity = entry["capacity"]
        axis.text(
            capacity["rate"],
            index,
            f"  {capacity['ok_rate']:,.0f} ok/s, {capacity['success_rate']:.0%} ok",
            va="center",
            fontsize=8,
        )
    axis.set_xlabel("requests per second through nginx (TLS), 3 replicas, wrk (median)")
    axis.set_title("2: throughput by row")
    axis.legend(loc="lower right", fontsize=8)
    axis.set_xlim(0, max(entry["capacity"]["rate"] for entry in entries) * 1.45)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _latency(validation: dict[str, Any] | None, rows: dict[str, Any] | None, path: Path) -> None:
    panels: list[tuple[str, list[str], list[dict[str, Any]]]] = []
    if validation is not None:
        items = [v for v in validation["scenarios"].values() if v["kind"] != "ceiling"]
        panels.append(("one replica, wrk closed loop", [v["label"] for v in items], items))
    if rows is not None:
        entries = list(rows["rows"].values())
        panels.append(
            (
                "rows through nginx, driver at a fixed rate (before any event)",
                [f"row {e['row']}: {e['label']}" for e in entries],
                [e["kill"]["before"] for e in entries],
            )
        )
    if not panels:
        return
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)), squeeze=False)
    for axis, (title, labels, values) in zip(axes[:, 0], panels, strict=True):
        positions = range(len(labels))
        width = 0.27
        for offset, (key, colour) in enumerate(
            (("p50_ms", "#90cdf4"), ("p90_ms", "#4299e1"), ("p99_ms", "#2c5282"))
        ):
            axis.barh(
                [p + (offset - 1) * width for p in positions],
                [value[key] for value in values],
                height=width,
                color=colour,
                label=key.replace("_ms", ""),
            )
        axis.set_yticks(list(positions), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("milliseconds")
        axis.set_title(f"latency percentiles: {title}")
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _share_over_time(rows: dict[str, Any], path: Path) -> None:
    entries = list(rows["rows"].values())
    figure, axes = plt.subplots(
        len(entries), 2, figsize=(12, 2.3 * len(entries) + 0.8), squeeze=False, sharex=True
    )
    replicas = sorted(
        {
            replica
            for entry in entries
            for kind in ("scale_out", "kill")
            for bucket in entry[kind]["timeline"]
            for replica in bucket["served_by"]
        },
        key=lambda rid: int(rid[1:]) if rid[1:].isdigit() else 99,
    )
    colour = {rid: REPLICA_COLOURS[i % len(REPLICA_COLOURS)] for i, rid in enumerate(replicas)}
    for row_index, entry in enumerate(entries):
        for column, kind in enumerate(("scale_out", "kill")):
            axis = axes[row_index][column]
            run = entry[kind]
            timeline = run["timeline"]
            times = [bucket["t"] for bucket in timeline]
            shares = []
            for rid in replicas:
                shares.append(
                    [
                        bucket["served_by"].get(rid, 0) / (sum(bucket["served_by"].values()) or 1)
                        for bucket in timeline
                    ]
                )
            axis.stackplot(
                times, shares, colors=[colour[rid] for rid in replicas], alpha=0.75, step="post"
            )
            success = [
                bucket["ok"] / bucket["requests"] if bucket["requests"] else float("nan")
                for bucket in timeline
            ]
            axis.step(times, success, where="post", color="black", linewidth=1.2)
            axis.axvspan(
                run["event_start"],
                max(run["event_end"], run["event_start"] + 0.1),
                color="red",
                alpha=0.25,
            )
            axis.axvline(run["event_start"], color="red", linewidth=1)
            what = "added" if kind == "scale_out" else "killed"
            axis.set_title(
                f"row {entry['row']} ({entry['label']}): {run['replica']} {what}; "
                f"{run['users_lost']} users lost, {run['failed']} failed",
                fontsize=8,
            )
            axis.set_ylim(0, 1.02)
            axis.tick_params(labelsize=7)
    handles: list[Artist] = [
        Rectangle((0, 0), 1, 1, color=colour[rid], alpha=0.75) for rid in replicas
    ]
    handles.append(Line2D([0], [0], color="black"))
    handles.append(Rectangle((0, 0), 1, 1, color="red", alpha=0.25))
    figure.legend(
        handles,
        [*replicas, "authenticated share", "event (kill / scale-out)"],
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(replicas) + 2,
        fontsize=8,
    )
    figure.supxlabel("seconds into the run (0.5 s slices)", fontsize=9, y=0.035)
    figure.supylabel("share of answers by replica", fontsize=9)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _logins(logins: dict[str, Any], path: Path) -> None:
    summary = logins["summary"]
    labels = ["raw Argon2id (1 thread)", "login -> session", "login -> tokens"]
    rates = [
        summary["argon2"]["rate"],
        summary["login_session"]["rate"],
        summary["login_token"]["rate"],
    ]
    cpu_rates = [
        1000 / summary["argon2"]["cpu_ms"],
        1000 / summary["login_session"]["auth_cpu_ms"],
        1000 / summary["login_token"]["auth_cpu_ms"],
    ]
    figure, axis = plt.subplots(figsize=(8, 3))
    positions = range(len(labels))
    axis.barh(
        [p - 0.2 for p in positions],
        rates,
        height=0.4,
        color="#2b6cb0",
        label="measured per second",
    )
    axis.barh(
        [p + 0.2 for p in positions], cpu_rates, height=0.4, color="#90cdf4", label="per CPU-second"
    )
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("operations per second, one core")
    axis.set_title(
        f"3: logins vs raw Argon2 (refresh: {summary['refresh']['rate']:,.0f}/s)", fontsize=10
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _attack(attack: dict[str, Any], path: Path) -> None:
    """Part 6: the users' logins/s with no attack and under attack; where attacks ended."""
    summary = attack["summary"]
    figure, (users, streams) = plt.subplots(
        1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 2]}
    )
    phases = [("no attack", summary["baseline"]), ("under attack", summary["attack"])]
    bars = users.bar(
        [label for label, _ in phases],
        [entry["rate"] for _, entry in phases],
        color=["#2b6cb0", "#c05621"],
    )
    for bar, (_, entry) in zip(bars, phases, strict=True):
        users.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{entry['rate']:.1f}/s\np99 {entry['p99_ms']:.0f} ms",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    users.set_ylabel("legitimate logins per second")
    users.set_ylim(0, max(entry["rate"] for _, entry in phases) * 1.35 or 1)
    users.set_title(f"legitimate users ({summary['rate_ratio']:.0%} under attack)", fontsize=10)
    tallies = list(summary["attackers"].values())
    labels = [tally["label"] for tally in tallies]
    left = [0.0] * len(tallies)
    for field, colour, name in (
        ("throttled", "#a0aec0", "429 (regulator)"),
        ("busy", "#d69e2e", "503 (Argon2 queue full)"),
        ("unavailable", "#805ad5", "503 (a dependency failed)"),
        ("hashed", "#e53e3e", "reached Argon2"),
    ):
        values = [float(tally[field]) for tally in tallies]
        streams.barh(labels, values, left=left, color=colour, label=name)
        left = [a + b for a, b in zip(left, values, strict=True)]
    streams.invert_yaxis()
    streams.tick_params(axis="y", labelsize=8)
    streams.set_xlabel("attacker requests (all rounds)")
    streams.set_title("where the attacker's requests ended", fontsize=10)
    streams.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    figure.suptitle("6: logins while an attacker floods the auth service", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_all(results: dict[str, Any], out_dir: Path) -> list[str]:
    """Draw what the results allow; the file names written."""
    written: list[str] = []
    validation = results.get("validation")
    rows = results.get("rows")
    logins = results.get("logins")
    if validation is not None:
        _validation_throughput(validation, out_dir / "validation_throughput.png")
        written.append("validation_throughput.png")
    if rows is not None and rows.get("rows"):
        _throughput_by_row(rows, out_dir / "throughput_by_row.png")
        written.append("throughput_by_row.png")
        _share_over_time(rows, out_dir / "replica_share_over_time.png")
        written.append("replica_share_over_time.png")
    if validation is not None or rows is not None:
        _latency(
            validation,
            rows if rows and rows.get("rows") else None,
            out_dir / "latency_percentiles.png",
        )
        written.append("latency_percentiles.png")
    if logins is not None:
        _logins(logins, out_dir / "logins.png")
        written.append("logins.png")
    if "attack" in results:
        _attack(results["attack"], out_dir / "attack.png")
        written.append("attack.png")
    return written
