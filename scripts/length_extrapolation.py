"""Held-out loss of trained language models at multiples of their trained context length:
``python scripts/length_extrapolation.py RUN_DIR [...] [--factors 1,2,4] [--out DIR]``.

Each run is scored on its test split as ``eval.py ckpt_path=RUN dataset.context_len=L`` scores it
(``attnexp.cli.evaluation_data``): the model as trained, the data cut into windows of ``L``. A run
with learned positions is refused beyond its trained length; its cell says so. Writes
``length_extrapolation.md`` (a table) and ``length_extrapolation.png`` (loss against length) into
``--out`` (default: the current folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnexp.cli import evaluation_data  # noqa: E402
from attnexp.runs.layout import RunDir  # noqa: E402
from attnexp.runs.prepare import load_run_config  # noqa: E402
from attnexp.util.plotting import new_figure, save_figure  # noqa: E402


def scores(run: Path, factors: list[int]) -> tuple[int, dict[int, float | str]]:
    """The run's trained context length and its test loss at each factor (or why not)."""
    from attnexp.training.pipeline import evaluate

    run_dir = RunDir(run)
    trained = int(load_run_config(run_dir).dataset.context_len)
    out: dict[int, float | str] = {}
    for factor in factors:
        cfg = load_run_config(run_dir)
        try:
            data = evaluation_data(cfg, {"context_len": trained * factor})
        except ValueError as e:
            out[factor] = f"refused: {e}"
            continue
        out[factor] = evaluate(cfg, run_dir.best_checkpoint(), data)["test/loss"]
        print(f"{run.name} x{factor} ({trained * factor} tokens): {out[factor]:.4f}", file=sys.stderr)
    return trained, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--factors", default="1,2,4", help="multiples of the trained context length")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]
    results = {run.name: scores(run, factors) for run in args.runs}
    header = "| run | trained length | " + " | ".join(f"test loss at {f}x" for f in factors) + " |"
    lines = [header, "|---" * (len(factors) + 2) + "|"]
    fig, axes = new_figure(cell=(4.5, 3.2))
    ax = axes[0, 0]
    reasons = []
    for name, (trained, values) in results.items():
        cells = [f"{v:.4f}" if isinstance(v, float) else "refused" for v in values.values()]
        lines.append(f"| {name} | {trained} | " + " | ".join(cells) + " |")
        reasons += [f"- {name}: {v}" for v in values.values() if isinstance(v, str)][:1]
        lengths = [trained * f for f, v in values.items() if isinstance(v, float)]
        ax.plot(lengths, [v for v in values.values() if isinstance(v, float)], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation context length (tokens)")
    ax.set_ylabel("test loss (nats/token)")
    ax.legend(fontsize=7)
    lines += ["", *reasons] if reasons else []
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "length_extrapolation.md").write_text("\n".join(lines) + "\n")
    save_figure(fig, args.out / "length_extrapolation.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
