"""``eval.py`` with other data keys of the run: a language model scored at another context length
(refused beyond the trained one for learned positions) and with sliding windows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnexp.cli import evaluation_data
from attnexp.runs.layout import RunDir
from attnexp.runs.prepare import load_run_config
from tests.conftest import SUBPROCESS_ENV

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "experiment=shakespeare_char_cpu", "trainer=cpu", "logger=csv", "figures=0",
    "backbone.depth=1", "backbone.dim=16", "dataset.context_len=16", "dataset.batch_size=4",
    "dataset.steps_per_epoch=4", "trainer.max_steps=8", "optim.scheduler.warmup_steps=2",
    "dataset=text", "dataset.source.vocab=bytes", "dataset.shape.vocab_size=256",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny language models trained by train.py (which saves the config eval.py reads):
    rotary positions only, and learned positions."""
    root = tmp_path_factory.mktemp("lm_eval")
    text = root / "corpus.txt"
    text.write_text("".join(f"{i % 97} is {'odd' if i % 2 else 'even'}\n" for i in range(600)))
    common = [*TINY, f"dataset.path={text}", f"paths.data_dir={root / 'data'}"]
    out = {}
    for name, extra in {"rope": ["backbone.positions=none", "attention.rope=true"], "learned": []}.items():
        subprocess.run([sys.executable, str(ROOT / "train.py"), *common, *extra,
                        f"hydra.run.dir={root / name}"], check=True, env=SUBPROCESS_ENV, cwd=ROOT,
                       capture_output=True)  # fmt: skip
        out[name] = root / name
    return out


def scored(run: Path, **changes) -> dict[str, float]:
    from attnexp.training.pipeline import evaluate

    run_dir = RunDir(run)
    cfg = load_run_config(run_dir)
    data = evaluation_data(cfg, changes)
    return evaluate(cfg, run_dir.best_checkpoint(), data)


def test_rotary_positions_score_longer_contexts_and_learned_ones_are_refused(runs):
    trained = scored(runs["rope"])
    recorded = json.loads((runs["rope"] / "results.json").read_text())["metrics"]
    assert trained["test/loss"] == pytest.approx(recorded["test/loss"], rel=1e-6)
    for length in (32, 64):
        longer = scored(runs["rope"], context_len=length)["test/loss"]
        assert longer != trained["test/loss"] and longer == pytest.approx(trained["test/loss"], rel=0.2)
    with pytest.raises(ValueError, match=r"dataset\.context_len=32 is longer than the 16 tokens .*\(backbone\.positions=learned\)"):
        scored(runs["learned"], context_len=32)
    shorter = scored(runs["learned"], context_len=8)  # shorter windows read fewer rows of the table
    assert shorter["test/loss"] > 0


def test_a_sliding_window_scores_the_same_tokens_with_more_history(runs):
    plain, sliding = scored(runs["learned"]), scored(runs["learned"], eval_stride=4)
    assert sliding["test/loss"] != plain["test/loss"]
    with pytest.raises(ValueError, match=r"dataset\.eval_stride=17 is larger than dataset\.context_len=16"):
        scored(runs["learned"], eval_stride=17)


def test_eval_py_takes_the_data_keys_on_its_command_line_and_refuses_them_on_a_classifier(runs, tmp_path, data_dir):
    def eval_py(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args, f"hydra.run.dir={tmp_path / 'e'}"],
                              env=SUBPROCESS_ENV, capture_output=True, text=True, cwd=ROOT)  # fmt: skip

    done = eval_py(f"ckpt_path={runs['rope']}", "dataset.context_len=32", "dataset.eval_stride=8")
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert written["dataset"] == {"context_len": 32, "eval_stride": 8} and written["metrics"]["test/loss"] > 0
    from tests.conftest import tiny

    classifier = tmp_path / "digits"
    subprocess.run([sys.executable, str(ROOT / "train.py"), *tiny("none", "cnn", "digits", data_dir),
                    "trainer.max_epochs=1", f"hydra.run.dir={classifier}"], check=True,
                   env=SUBPROCESS_ENV, cwd=ROOT, capture_output=True)  # fmt: skip
    refused = eval_py(f"ckpt_path={classifier}", "dataset.context_len=32")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "dataset.context_len=32: the run's data" in refused.stdout + refused.stderr


def test_the_length_extrapolation_script_tables_and_plots_loss_against_length(runs, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("length_extrapolation", ROOT / "scripts" / "length_extrapolation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(runs["rope"]), str(runs["learned"]), "--factors", "1,2", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "length_extrapolation.md").read_text().splitlines()
    rope, learned = (next(row for row in table if row.startswith(f"| {n} |")) for n in ("rope", "learned"))
    assert rope.count("| 16 |") == 1 and "refused" not in rope
    assert learned.endswith("| refused |")
    assert "- learned: refused: dataset.context_len=32 is longer than the 16 tokens" in "\n".join(table)
    assert (tmp_path / "length_extrapolation.png").stat().st_size > 1000
