"""A new attention variant is one module file and one yaml: a throwaway mixer written to a
temporary config root (``toy_root`` in conftest) is taken by a sweep through ``train.py``, its
comparison report, its figures and the benchmark's smoke mode, with no edit to the project. The
contract tests (tests/test_attention.py) take it too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from attnexp.bench.suite import main
from attnexp.config.attention import searchpath_override
from attnexp.runs.record import find_results, read_results
from tests.conftest import SUBPROCESS_ENV, TOY, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_a_sweep_its_report_and_figures_take_the_new_variant(toy_root, data_dir, tmp_path):
    # What a user adds to the command line for a variant outside conf/: its config root for Hydra,
    # its module's dir for Python.
    env = {**SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join([str(toy_root), str(ROOT)])}
    overrides = [o for o in tiny(TOY, "transformer", "digits", data_dir) if o != f"attention={TOY}"]
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", f"attention=none,{TOY}", *overrides,
         *searchpath_override([toy_root]), "debug=limit", "figures=2", f"paths.log_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["choices"]["attention"]: r for r in map(read_results, find_results(tmp_path))}
    assert set(runs) == {"none", TOY}
    assert all(r["status"] == "completed" for r in runs.values())
    assert runs[TOY]["attention_flops"] > 0

    # Figures: one per slot of its declared weight kind, under the name the module gave it.
    figures = sorted(p.name for p in (Path(runs[TOY]["run_dir"]) / "figures").glob("*.png"))
    assert figures and all(name.endswith(".affinity.png") for name in figures)

    (report,) = tmp_path.rglob("comparison.md")
    rows = [line for line in report.read_text().splitlines() if f"| {TOY} |" in line]
    assert len(rows) == 1, report.read_text()


def test_the_benchmark_smoke_mode_takes_the_new_variant(toy_root, data_dir, tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = main(
            ["--smoke", "--variants", TOY, "--search-path", str(toy_root), "--out", str(out),
             "--threads", "1", "--override", f"paths.data_dir={data_dir}"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    results = json.loads(out.read_text())
    timed = {(r["variant"], r["implementation"]) for r in results["modules"]}
    assert timed == {(TOY, "attnexp")}  # no reference declared for it, none needed
    assert results["checks"] == []
    scaled = [r for r in results["scaling"] if r["variant"] == TOY]
    assert scaled and all(r["ms"] > 0 for r in scaled)  # a mixer: on the scaling curve
