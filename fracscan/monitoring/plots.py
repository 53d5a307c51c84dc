"""One PNG per figure over time, with its limits and alarms (matplotlib: the `evaluate` extra).

Each plot shows the pooled region ("all") of every model series, and any region with an alarm in that
figure; a new series starts at a dashed line. The PNG carries no metadata beyond the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTTED = ("positive_rate", "definite_rate", "failure_rate", "fallback_rate", "qc_rate", "score_shift", "spread_shift",
           "sensitivity", "specificity")  # fmt: skip


def write_plots(report: dict[str, Any], folder: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    windows = list(dict.fromkeys(c["window"] for c in report["cells"]))
    x = {w: i for i, w in enumerate(sorted(windows))}
    written = []
    for figure in PLOTTED:
        cells = [c for c in report["cells"] if figure in c["figures"] and c["figures"][figure].get("value") is not None]
        if not cells:
            continue
        alarmed = {a["region"] for a in report["alarms"] if a["figure"] == figure}
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
        for (series, region), points in _lines(cells, {"all"} | alarmed).items():
            xs = [x[c["window"]] for c in points]
            f = [c["figures"][figure] for c in points]
            (line,) = ax.plot(xs, [v["value"] for v in f], marker="o", label=f"series {series} {region}")
            lo = [v.get("lower", float("nan")) for v in f]
            hi = [v.get("upper", float("nan")) for v in f]
            ax.fill_between(
                xs, lo if figure not in ("score_shift", "spread_shift") else 0, hi, alpha=0.15, color=line.get_color()
            )
            bad = [(xx, v["value"]) for xx, v in zip(xs, f, strict=True) if v.get("status") == "alarm"]
            if bad:
                bad_x, bad_y = zip(*bad, strict=True)
                ax.scatter(bad_x, bad_y, s=120, facecolors="none", edgecolors="red", linewidths=2, zorder=5)
        for s in report["series"][1:]:
            ax.axvline(x[s["first_window"]], color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(x)), sorted(x), rotation=45, ha="right", fontsize=7)
        ax.set_title(figure.replace("_", " ") + " per window (band: limits; red ring: alarm)", fontsize=10)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = folder / f"{figure}.png"
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def _lines(cells: list[dict[str, Any]], regions: set[str]) -> dict[tuple[int, str], list[dict[str, Any]]]:
    out: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for c in cells:
        if c["region"] in regions:
            out.setdefault((c["series"], c["region"]), []).append(c)
    return out
