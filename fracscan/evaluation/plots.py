"""ROC curves as a PNG; matplotlib (the `evaluate` extra) is imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fracscan.evaluation.records import Case
from fracscan.evaluation.statistics import auc, roc_curve


def plot_roc(
    cases: list[Case],
    decisions: Any,
    path: str | Path,
    *,
    title: str,
    subtitle: str = "",
    metrics: dict[str, Any] | None = None,
) -> Path:
    """ROC curves as a PNG: overall (bold) and per region (thin), operating points marked."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    y = np.array([c.label for c in cases], dtype=bool)
    s = np.array([c.score for c in cases], dtype=np.float64)
    d = np.asarray(decisions, dtype=bool)
    regions = np.array([c.region for c in cases])
    names = sorted(set(regions.tolist()))
    # Dark tab20 shades first, then the light ones: up to 10 regions all get strong colours.
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    palette = [colormaps["tab20"](order[i % 20]) for i in range(len(names))]

    fig = Figure(figsize=(11, 7.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    chance = ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")[0]

    def point(mask: NDArray[np.bool_]) -> tuple[float, float]:
        yy, dd = y[mask], d[mask]
        return float(np.mean(dd[~yy])), float(np.mean(dd[yy]))

    handles, skipped = [], []
    for i, name in enumerate(names):
        mask = regions == name
        area = auc(y[mask], s[mask])
        if area is None:
            skipped.append(name)
            continue
        fpr, tpr = roc_curve(y[mask], s[mask])
        color = palette[i]
        handles.append(
            ax.plot(
                fpr,
                tpr,
                color=color,
                linewidth=1.2,
                alpha=0.9,
                label=f"{name}  AUC {area:.3f}  (n={int(mask.sum())}, {int(y[mask].sum())} pos)",
            )[0]
        )
        ax.plot(
            *point(mask),
            marker="o",
            markersize=7,
            color=color,
            markeredgecolor="0.15",
            markeredgewidth=0.8,
            linestyle="none",
            zorder=4,
        )
    area = auc(y, s)
    if area is not None:
        fpr, tpr = roc_curve(y, s)
        ci = (metrics or {}).get("overall", {}).get("auc_ci")
        ci_text = f" [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else ""
        overall = ax.plot(
            fpr,
            tpr,
            color="black",
            linewidth=2.8,
            zorder=5,
            label=f"overall  AUC {area:.3f}{ci_text}  (n={y.size}, {int(y.sum())} pos)",
        )[0]
        ax.plot(
            *point(np.ones(y.size, bool)),
            marker="D",
            markersize=10,
            color="black",
            markeredgecolor="white",
            markeredgewidth=1.2,
            linestyle="none",
            zorder=6,
        )
        handles.insert(0, overall)
    handles += [
        Line2D(
            [],
            [],
            marker="D",
            markersize=8,
            color="black",
            markeredgecolor="white",
            linestyle="none",
            label="operating point (overall)",
        ),
        Line2D(
            [],
            [],
            marker="o",
            markersize=7,
            color="0.75",
            markeredgecolor="0.15",
            linestyle="none",
            label="operating point (region)",
        ),
        chance,
    ]
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    if skipped:
        ax.text(
            0.99,
            0.01,
            "no ROC (one class only): " + ", ".join(skipped),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.4",
        )
    path = Path(path)
    fig.savefig(path, format="png")
    return path
