"""The comparison report, checked against statistics computed here from the files themselves."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from attnexp import report as rp
from attnexp.results import write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VARIANTS = ("mha", "se")
BACKBONES = ("transformer", "cnn")
SEEDS = (0, 1, 2)


def _results(attention, backbone, seed, *, status="completed", dataset="mnist1d", **extra):
    # Distinct, known numbers per run so a mix-up between groups or seeds changes the answer.
    k = VARIANTS.index(attention) * 10 + BACKBONES.index(backbone) * 5 + seed
    data = {
        "status": status,
        "error": None,
        "choices": {"attention": attention, "backbone": backbone, "dataset": dataset,
                    "seed": seed, "experiment": None},
        "overrides": [f"attention={attention}", f"backbone={backbone}", f"seed={seed}"],
        "config_hash": "x",
        "metrics": {"test/acc": 0.5 + 0.013 * k, "test/f1": 0.4 + 0.011 * k},
        "params": 1000 * (1 + k // 5),
        "attention_flops": 123456 * (1 + k // 5),
        "throughput": 100.0 + 7 * k,
        "peak_memory_mb": 50.0 + k,
        "wall_time_s": 10.0 + 2 * k,
    }  # fmt: skip
    data.update(extra)
    return data


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 variants x 2 backbones x 3 seeds, one failed job and one corrupt file."""
    root = tmp_path / "sweep"
    i = 0
    for a in VARIANTS:
        for b in BACKBONES:
            for s in SEEDS:
                write_results(root / str(i), _results(a, b, s))
                i += 1
    failed = _results("se", "cnn", 3, status="failed", error="RuntimeError: out of memory")
    failed["metrics"] = {}
    write_results(root / str(i), failed)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "results.json").write_text('{"status": "completed", "choi')
    return root


def _expected(root: Path) -> dict[tuple[str, str], dict]:
    """Mean and sample std per group, straight from the JSON files."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in root.rglob("results.json"):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if d["status"] == "completed":
            groups.setdefault((d["choices"]["attention"], d["choices"]["backbone"]), []).append(d)
    return {
        key: {
            "acc_mean": statistics.mean(d["metrics"]["test/acc"] for d in ds),
            "acc_std": statistics.stdev(d["metrics"]["test/acc"] for d in ds),
            "f1_mean": statistics.mean(d["metrics"]["test/f1"] for d in ds),
            "f1_std": statistics.stdev(d["metrics"]["test/f1"] for d in ds),
            "throughput": statistics.mean(d["throughput"] for d in ds),
            "params": statistics.mean(d["params"] for d in ds),
            "n": len(ds),
        }
        for key, ds in groups.items()
    }


def test_rows_equal_statistics_of_the_files(sweep):
    report = rp.build_report([sweep])
    expected = _expected(sweep)
    assert len(report.rows) == 4
    for row in report.rows:
        e = expected[(row.attention, row.backbone)]
        assert row.n_seeds == e["n"] == 3
        assert row.acc_mean == pytest.approx(e["acc_mean"])
        assert row.acc_std == pytest.approx(e["acc_std"])
        assert row.f1_mean == pytest.approx(e["f1_mean"])
        assert row.f1_std == pytest.approx(e["f1_std"])
        assert row.throughput == pytest.approx(e["throughput"])
        assert row.params == pytest.approx(e["params"])
        assert row.n_failed == (1 if (row.attention, row.backbone) == ("se", "cnn") else 0)


def test_failures_and_unreadable_are_reported_not_fatal(sweep):
    report = rp.build_report([sweep])
    assert [(r.attention, r.backbone, r.seed) for r in report.failures] == [("se", "cnn", 3)]
    assert len(report.unreadable) == 1
    assert report.unreadable[0].path == sweep / "corrupt" / "results.json"
    md = (sweep / rp.MD_FILE).read_text()
    assert "RuntimeError: out of memory" in md
    assert "## Unreadable runs (1)" in md and "corrupt" in md


def test_rows_sorted_by_dataset_backbone_then_accuracy(sweep):
    rows = rp.build_report([sweep]).rows
    keys = [(r.dataset, r.backbone) for r in rows]
    assert keys == sorted(keys)
    for b in BACKBONES:
        accs = [r.acc_mean for r in rows if r.backbone == b]
        assert accs == sorted(accs, reverse=True)


def test_csv_and_markdown_hold_the_numbers(sweep):
    rp.build_report([sweep])
    expected = _expected(sweep)
    with open(sweep / rp.CSV_FILE) as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4
    md = (sweep / rp.MD_FILE).read_text()
    for line in lines:
        e = expected[(line["attention"], line["backbone"])]
        assert float(line["test_acc_mean"]) == pytest.approx(e["acc_mean"])
        assert float(line["test_acc_std"]) == pytest.approx(e["acc_std"])
        assert float(line["test_f1_mean"]) == pytest.approx(e["f1_mean"])
        assert int(line["n_seeds"]) == 3
        # Markdown shows percent with two decimals.
        assert f"{100 * e['acc_mean']:.2f} ± {100 * e['acc_std']:.2f}" in md
    # No run differs in experiment, so the column is left out of the display table.
    assert "experiment" not in md.splitlines()[4]


def test_pngs_are_valid(sweep, tmp_path):
    out = tmp_path / "report"
    report = rp.build_report([sweep], out)
    pngs = sorted(p.name for p in report.files if p.suffix == ".png")
    assert pngs == ["accuracy_mnist1d.png", "accuracy_vs_params.png", "accuracy_vs_throughput.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.png"))  # no temp files left


def test_single_seed_std_is_shown_as_missing(tmp_path):
    write_results(tmp_path / "0", _results("mha", "cnn", 0))
    report = rp.build_report([tmp_path])
    (row,) = report.rows
    assert row.n_seeds == 1 and math.isnan(row.acc_std)
    assert f"{100 * row.acc_mean:.2f} ± {rp.MISSING}" in (tmp_path / rp.MD_FILE).read_text()
    with open(tmp_path / rp.CSV_FILE) as f:
        assert next(csv.DictReader(f))["test_acc_std"] == ""


def test_experiment_column_appears_when_runs_differ(tmp_path):
    for i, exp in enumerate(["small", "large"]):
        r = _results("mha", "cnn", 0)
        r["choices"]["experiment"] = exp
        write_results(tmp_path / str(i), r)
    report = rp.build_report([tmp_path])
    assert sorted(r.experiment for r in report.rows) == ["large", "small"]
    header = (tmp_path / rp.MD_FILE).read_text().splitlines()[4]
    assert "| experiment |" in header


def test_group_with_only_failures_is_a_row_without_numbers(tmp_path):
    write_results(tmp_path / "0", _results("mha", "cnn", 0))
    write_results(tmp_path / "1", _results("se", "cnn", 0, status="failed", error="ValueError: x"))
    rows = rp.build_report([tmp_path]).rows
    assert [(r.attention, r.n_seeds, r.n_failed) for r in rows] == [("mha", 1, 0), ("se", 0, 1)]
    assert math.isnan(rows[1].acc_mean)


def test_several_sweep_dirs_are_merged(sweep, tmp_path):
    other = tmp_path / "other"
    write_results(other / "0", _results("mha", "cnn", 0, dataset="digits"))
    report = rp.build_report([sweep, other], tmp_path / "out")
    assert sorted({r.dataset for r in report.rows}) == ["digits", "mnist1d"]
    assert (tmp_path / "out" / "accuracy_digits.png").exists()


def test_missing_dir_and_empty_dir_are_clear_errors(tmp_path):
    with pytest.raises(rp.ReportError, match="does not exist"):
        rp.build_report([tmp_path / "nope"])
    with pytest.raises(rp.ReportError, match="no results.json found under"):
        rp.build_report([tmp_path])


def test_table_data_for_wandb_uses_raw_values(sweep):
    rows = rp.build_report([sweep]).rows
    columns, data = rp.table_data(rows)
    assert columns == rp.CSV_COLUMNS and len(data) == len(rows)
    first = dict(zip(columns, data[0], strict=True))
    assert first["test_acc_mean"] == rows[0].acc_mean and first["experiment"] is None


def test_cli_writes_the_report_and_fails_on_a_missing_dir(sweep, tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "compare.py"
    ok = subprocess.run([sys.executable, str(script), str(sweep)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "mha" in ok.stdout and (sweep / rp.CSV_FILE).exists()
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert "does not exist" in bad.stderr


def test_log_to_wandb_offline_writes_the_table(sweep, tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = rp.build_report([sweep]).rows
    rp.log_to_wandb(rows, "attnexp-test", "sweep", dir=tmp_path)
    (table_file,) = tmp_path.glob("wandb/offline-run-*/files/media/table/comparison_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == rp.CSV_COLUMNS
    assert table["data"] == [list(line) for line in rp.table_data(rows)[1]]


def test_overlapping_dirs_count_each_run_once(sweep):
    rows = rp.build_report([sweep, sweep / "0"]).rows
    assert [r.n_seeds for r in rows] == [3, 3, 3, 3]


def test_malformed_and_running_runs_are_listed_not_counted(tmp_path):
    write_results(tmp_path / "ok", _results("mha", "cnn", 0))
    write_results(tmp_path / "running", _results("mha", "cnn", 1, status="running", metrics={}))
    no_dataset = _results("mha", "cnn", 2)
    del no_dataset["choices"]["dataset"]
    write_results(tmp_path / "no_dataset", no_dataset)
    write_results(tmp_path / "no_acc", _results("mha", "cnn", 3, metrics={"test/f1": 0.5}))
    report = rp.build_report([tmp_path])
    assert [r.n_seeds for r in report.rows] == [1]
    assert [r.path.name for r in report.running] == ["running"]
    reasons = {u.path.parent.name: u.reason for u in report.unreadable}
    assert "choices.dataset" in reasons["no_dataset"]
    assert "test/acc" in reasons["no_acc"]
