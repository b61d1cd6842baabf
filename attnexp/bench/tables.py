"""What the suite shows: the targets of issue 7, Markdown tables and the scaling plot."""

from __future__ import annotations

import math
from pathlib import Path

from attnexp.plotting import new_figure, save_figure
from attnexp.report import _md_table

# (variant, reference, highest allowed time ratio ours / reference), read at N=256, dim=128.
TARGETS = [
    ("mha", "torch.nn.MultiheadAttention", 1.05),
    ("muse", "three-branch MUSE (matmul-softmax)", 1 / 1.25),  # >= 1.25x faster
    ("se", "timm SEModule", 1.1),
    ("cbam", "timm CbamModule", 1.1),
]


def evaluate_targets(rows: list[dict], n: int = 256, dim: int = 128) -> list[dict]:
    """Each target whose (variant, reference) was measured at ``n`` positions and ``dim``."""
    found = []
    for variant, reference, limit in TARGETS:
        for r in rows:
            same_size = math.prod(r["grid"]) == n and r["dim"] == dim
            if r["variant"] == variant and r["implementation"] == reference and same_size:
                ratio = r["ours_over_ref"]
                found.append(
                    {"variant": variant, "reference": reference, "n": n, "dim": dim,
                     "ours_over_ref": ratio, "limit": limit, "met": ratio <= limit}
                )  # fmt: skip
    return found


def cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list]) -> str:
    return _md_table(header, [[cell(v) for v in row] for row in rows])


def grid_text(grid: list[int]) -> str:
    return "×".join(map(str, grid))


def markdown_report(results: dict) -> str:
    modules = table(
        ["variant", "implementation", "B", "grid", "C", "ms", "peak MB", "GFLOP/s", "ours ÷ ref"],
        [
            [r["variant"], r["implementation"], r["batch"], grid_text(r["grid"]), r["dim"],
             r["ms"], r["peak_mb"], r["gflop_per_s"], r["ours_over_ref"]]
            for r in results["modules"]
        ],
    )  # fmt: skip
    checks = table(
        ["variant", "reference", "B", "grid", "C", "max abs error", "ok"],
        [
            [c["variant"], c["reference"], c["batch"], grid_text(c["grid"]), c["dim"],
             c["max_abs_error"], c["ok"]]
            for c in results["checks"]
        ],
    )  # fmt: skip
    curve = results["scaling"]
    variants = list(dict.fromkeys(r["variant"] for r in curve))
    point = {(r["variant"], r["n"]): r for r in curve}
    scaling = table(
        ["N"] + [f"{v} {unit}" for v in variants for unit in ("ms", "MB")],
        [
            [n] + [point[v, n][key] for v in variants for key in ("ms", "peak_mb")]
            for n in sorted({r["n"] for r in curve})
        ],
    )
    targets = table(
        ["variant", "reference", "N", "C", "ours ÷ ref", "target", "met"],
        [
            [t["variant"], t["reference"], t["n"], t["dim"], t["ours_over_ref"],
             f"≤ {t['limit']:.3g}", t["met"]]
            for t in results["targets"]
        ],
    )  # fmt: skip
    loop = results["plain_loop"]
    return "\n\n".join(
        [
            "## Module benchmarks (one forward + backward step)",
            modules,
            "## Numeric checks (eval mode, atol = rtol = 1e-5)",
            checks,
            f"## Scaling (B={curve[0]['batch']}, C={curve[0]['dim']})" if curve else "## Scaling",
            scaling,
            "## Targets (issue 7, at N=256, C=128)",
            targets if results["targets"] else "(not measured in this run)",
            f"## Plain loop\n\n{loop['model']}: {loop['samples_per_s']:.1f} samples/s "
            f"(batch {loop['batch_size']}, {loop['steps']} timed steps)",
        ]
    )


def save_scaling_plot(rows: list[dict], path: Path) -> Path:
    """Time and peak memory of one step against N, one line per variant, log-log."""
    fig, axes = new_figure(1, 2, cell=(4.5, 3.5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        curve = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["n"])
        for ax, key in zip(axes[0], ("ms", "peak_mb"), strict=True):
            ax.plot([r["n"] for r in curve], [r[key] for r in curve], marker="o", label=variant)
    for ax, label in zip(axes[0], ("time per step (ms)", "peak memory (MB)"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("one forward + backward step")
    return save_figure(fig, path)
