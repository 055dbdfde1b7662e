"""The report's figures as PNG bytes (embedded in the HTML page and written beside it): bars with error bars per
table, and the pretraining loss curves of every cell overlaid, one colour per row."""

from __future__ import annotations

import io
from pathlib import Path

from meter.study.cells import StudyPlan
from meter.study.results import Table
from meter.train.metrics_log import read_metrics


def _pyplot():  # matplotlib.pyplot, imported late (slow) with a file-only backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain(text: str) -> str:
    """Text shown as written: matplotlib reads `$...$` as math (`$\\frac$` in a row name failed the report)."""
    return text.replace("$", r"\$")


def _png(fig) -> bytes:  # a matplotlib Figure
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def bar_chart(table: Table) -> bytes:
    """One panel per column: each row's mean, with its standard deviation over seeds as an error bar."""
    plt = _pyplot()
    across = min(3, max(1, len(table.columns)))
    down = max(1, -(-len(table.columns) // across))
    width = max(4.0, 0.55 * len(table.rows) + 1.6)
    fig, axes = plt.subplots(down, across, figsize=(width * across, 3.8 * down), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.flat[len(table.columns) :]:
        ax.axis("off")
    for ax, column in zip(axes.flat, table.columns, strict=False):
        names = [_plain(row.name) for row in table.rows]
        stats = [row.stats.get(column.label) for row in table.rows]
        means = [s.mean if s and s.n else 0.0 for s in stats]
        errors = [s.std or 0.0 if s else 0.0 for s in stats]
        palette = [colors[i % len(colors)] for i in range(len(names))]
        ax.bar(range(len(names)), means, yerr=errors, capsize=4, color=palette)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(_plain(column.label), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        for index, (mean, stat) in enumerate(zip(means, stats, strict=True)):
            ax.text(index, mean, f"{mean:.1f}" if stat and stat.n else "n/a", ha="center", va="bottom", fontsize=8)
    return _png(fig)


def pretraining_curves(plan: StudyPlan) -> bytes | None:
    """Every pretraining run's logged losses against steps; one colour per row, one line per seed."""
    series: dict[str, list[tuple[str, list[dict]]]] = {}
    seen: set[str] = set()
    for cell in plan.cells:
        for run in cell.runs:
            if run.kind == "pretrain" and run.folder not in seen:
                seen.add(run.folder)
                records = read_metrics(Path(run.folder) / "metrics.jsonl")
                if records:
                    series.setdefault(cell.row, []).append((cell.name, records))
    keys = sorted({k for runs in series.values() for _, rs in runs for r in rs for k in r if k.endswith("_loss")})
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys, strict=True):
        for index, (row, runs) in enumerate(series.items()):
            for number, (_, records) in enumerate(runs):
                points = [(r["step"], r[key]) for r in records if key in r]
                if points:
                    steps, values = zip(*points, strict=True)
                    ax.plot(steps, values, color=colors[index % len(colors)], alpha=0.85, linewidth=1.2,
                            label=_plain(row) if number == 0 else None)  # fmt: skip
        ax.set_title(_plain(key), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)
