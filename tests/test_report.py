"""The comparison report, checked against statistics computed here from the files themselves."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnexp import report as rp
from attnexp.config.cell import CELL_GROUPS
from attnexp.report import stats as st
from attnexp.runs.record import load_record, parse_record, write_results
from attnexp.tasks.spec import MAX, MIN, Metric, Task, classification

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
        assert row.stat("test/acc").mean == pytest.approx(e["acc_mean"])
        assert row.stat("test/acc").std == pytest.approx(e["acc_std"])
        assert row.stat("test/f1").mean == pytest.approx(e["f1_mean"])
        assert row.stat("test/f1").std == pytest.approx(e["f1_std"])
        assert row.costs["throughput"] == pytest.approx(e["throughput"])
        assert row.costs["params"] == pytest.approx(e["params"])
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
        accs = [r.stat("test/acc").mean for r in rows if r.backbone == b]
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
    assert pngs == ["primary_mnist1d.png", "primary_vs_attention_flops.png", "primary_vs_params.png", "primary_vs_throughput.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.png"))  # no temp files left


def test_single_seed_std_is_shown_as_missing(tmp_path):
    write_results(tmp_path / "0", _results("mha", "cnn", 0))
    report = rp.build_report([tmp_path])
    (row,) = report.rows
    acc = row.stat("test/acc")
    assert row.n_seeds == 1 and math.isnan(acc.std)
    assert f"{100 * acc.mean:.2f} ± {rp.MISSING}" in (tmp_path / rp.MD_FILE).read_text()
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
    assert math.isnan(rows[1].stat("test/acc").mean)


def test_several_sweep_dirs_are_merged(sweep, tmp_path):
    other = tmp_path / "other"
    write_results(other / "0", _results("mha", "cnn", 0, dataset="digits"))
    report = rp.build_report([sweep, other], tmp_path / "out")
    assert sorted({r.dataset for r in report.rows}) == ["digits", "mnist1d"]
    assert (tmp_path / "out" / "primary_digits.png").exists()


def test_missing_dir_and_empty_dir_are_clear_errors(tmp_path):
    with pytest.raises(rp.ReportError, match="does not exist"):
        rp.build_report([tmp_path / "nope"])
    with pytest.raises(rp.ReportError, match="no results.json found under"):
        rp.build_report([tmp_path])


def test_table_data_for_wandb_uses_raw_values(sweep):
    rows = rp.build_report([sweep]).rows
    columns, data = rp.table_data(rows)
    assert columns[:6] == [*CELL_GROUPS, "test_acc_mean", "test_acc_std"]
    assert len(data) == len(rows)
    first = dict(zip(columns, data[0], strict=True))
    assert first["test_acc_mean"] == rows[0].stat("test/acc").mean and first["experiment"] is None


def test_cli_writes_the_report_and_fails_on_a_missing_dir(sweep, tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "compare.py"
    run = [sys.executable, str(script), str(sweep)]
    strict = subprocess.run(run, capture_output=True, text=True)  # the sweep holds a corrupt record
    assert strict.returncode == 1 and "cannot read" in strict.stderr and "corrupt" in strict.stderr
    ok = subprocess.run([*run, "--skip-unreadable"], capture_output=True, text=True)
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
    assert table["columns"] == rp.table_data(rows)[0]
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


# A task the report was never told about: its declaration travels in results.json.
LM = Task("lm", (Metric("bpc", MIN, "bpc"), Metric("acc", MAX, "acc", percent=True)))


def _lm_results(attention, seed, bpc):
    r = _results(attention, "transformer", seed, dataset="text", task=LM.to_json())
    r["metrics"] = {"test/bpc": bpc, "test/acc": 0.3 + 0.01 * seed}
    return r


def test_a_declared_lower_is_better_metric_reaches_the_report_sorted_ascending(tmp_path):
    bpcs = {"mha": [1.9, 2.1], "se": [1.1, 1.2]}  # the same accuracy: only bpc can order them
    for attention, values in bpcs.items():
        for seed, bpc in enumerate(values):
            write_results(tmp_path / f"{attention}{seed}", _lm_results(attention, seed, bpc))
    report = rp.build_report([tmp_path])
    assert [r.attention for r in report.rows] == ["se", "mha"]  # lowest bpc first
    with open(tmp_path / rp.CSV_FILE) as f:
        lines = {line["attention"]: line for line in csv.DictReader(f)}
    for attention, values in bpcs.items():
        assert float(lines[attention]["test_bpc_mean"]) == pytest.approx(statistics.mean(values))
        assert float(lines[attention]["test_bpc_std"]) == pytest.approx(statistics.stdev(values))
    md = (tmp_path / rp.MD_FILE).read_text()
    assert "| test bpc | test acc (%) |" in md  # the task's order; bpc is no percentage
    # Two seeds: the 95% interval is the mean ± t(1 df) * std / sqrt(2) = mean ± 8.985 std.
    half = 12.706204736174705 / math.sqrt(2) * statistics.stdev([1.1, 1.2])
    bpc = f"1.15 ± {statistics.stdev([1.1, 1.2]):.4g} [{1.15 - half:.4g}, {1.15 + half:.4g}]"
    assert f"| {bpc} | 30.50 ± 0.71 [24.15, 36.85] |" in md
    assert (tmp_path / "primary_text.png").exists()


def _md_rows(path: Path) -> list[dict[str, str]]:
    """The comparison table of a comparison.md, one dict per row keyed by the header."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header, *rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(header, row, strict=True)) for row in rows if len(row) == len(header)]


def test_runs_of_two_tasks_share_one_table_with_missing_cells(tmp_path):
    write_results(tmp_path / "cls", _results("mha", "cnn", 0))  # classification
    write_results(tmp_path / "lm", _lm_results("mha", 0, 1.4))
    rows = rp.build_report([tmp_path]).rows
    with open(tmp_path / rp.CSV_FILE) as f:
        lines = {line["dataset"]: line for line in csv.DictReader(f)}
    assert set(lines["text"]) == set(lines["mnist1d"]) >= {"test_bpc_mean", "test_f1_mean"}
    assert lines["text"]["test_f1_mean"] == "" and lines["mnist1d"]["test_bpc_mean"] == ""
    cells = {row["dataset"]: row for row in _md_rows(tmp_path / rp.MD_FILE)}
    assert cells["text"]["test F1 (%)"] == rp.MISSING and cells["text"]["test bpc"] != rp.MISSING
    assert cells["mnist1d"]["test bpc"] == rp.MISSING
    assert {r.dataset: r.task.name for r in rows} == {"mnist1d": "classification", "text": "lm"}


def test_a_results_file_without_a_task_reads_as_classification(tmp_path):
    write_results(tmp_path, _results("mha", "cnn", 0))  # as written before "task" existed
    record = load_record(tmp_path)
    assert record.task == classification()
    assert record.value("test/acc") == pytest.approx(0.5 + 0.013 * 5)
    assert math.isnan(record.value("test/acc_top5"))  # declared, not in this file


def test_a_bad_task_declaration_makes_the_run_unreadable(tmp_path):
    write_results(tmp_path / "ok", _results("mha", "cnn", 0))
    bad = {"name": "lm", "metrics": [{"name": "bpc", "direction": "lower", "label": "bpc"}]}
    write_results(tmp_path / "bad", _results("mha", "cnn", 1, task=bad))
    report = rp.build_report([tmp_path])
    (unreadable,) = report.unreadable
    assert "direction must be one of max, min, got 'lower'" in unreadable.reason


# --------------------------------------------------------------------------- intervals, baseline


T_2DF = 4.302652729911275  # the 97.5% quantile of Student's t with 2 degrees of freedom


def test_csv_holds_the_t_interval_of_every_metric(sweep):
    rp.build_report([sweep])
    with open(sweep / rp.CSV_FILE) as f:
        lines = list(csv.DictReader(f))
    for line in lines:
        e = _expected(sweep)[(line["attention"], line["backbone"])]
        for m in ("acc", "f1"):
            half = T_2DF * e[f"{m}_std"] / math.sqrt(3)
            assert float(line[f"test_{m}_ci_low"]) == pytest.approx(e[f"{m}_mean"] - half)
            assert float(line[f"test_{m}_ci_high"]) == pytest.approx(e[f"{m}_mean"] + half)
        assert "verdict" not in line  # no baseline asked for: no comparison columns


def test_a_clear_difference_to_the_baseline_is_flagged_better(sweep):
    # se's accuracy is mha's + 0.13 on every seed (see _results): paired by seed, exact.
    report = rp.build_report([sweep], baseline="attention=mha")
    for row in report.rows:
        assert row.versus.baseline == "mha"
        if row.attention == "mha":
            assert row.versus.verdict == rp.BASELINE and row.versus.comparison is None
        else:
            c = row.versus.comparison
            assert c.test == "paired" and c.diff == pytest.approx(0.13) and c.n == 3
            assert row.versus.verdict == "better" and row.versus.p_holm < 1e-6
    with open(sweep / rp.CSV_FILE) as f:
        lines = {(x["attention"], x["backbone"]): x for x in csv.DictReader(f)}
    se = lines[("se", "cnn")]
    assert (se["verdict"], se["test"], se["baseline_metric"]) == ("better", "paired", "test/acc")
    assert float(se["delta"]) == pytest.approx(0.13)
    assert lines[("mha", "cnn")]["verdict"] == rp.BASELINE and lines[("mha", "cnn")]["p"] == ""
    cells = {(x["attention"], x["backbone"]): x for x in _md_rows(sweep / rp.MD_FILE)}
    assert cells[("se", "cnn")]["verdict"] == "better"
    assert cells[("se", "cnn")]["Δ vs baseline"].startswith("+13.00 [+13.00, +13.00]")


def test_a_lower_is_better_metric_is_judged_by_its_direction(tmp_path):
    # se's bpc is 0.8 and 0.9 below mha's on seeds 0 and 1: lower, so better; and mha, against
    # se as the baseline, is worse.
    for attention, values in {"mha": [1.9, 2.1], "se": [1.1, 1.2]}.items():
        for seed, bpc in enumerate(values):
            write_results(tmp_path / f"{attention}{seed}", _lm_results(attention, seed, bpc))
    rows = {r.attention: r for r in rp.build_report([tmp_path], baseline="attention=mha").rows}
    c = rows["se"].versus.comparison
    assert c.diff == pytest.approx(-0.85) and c.high < 0
    # Paired differences -0.8, -0.9: t = -0.85 / (0.0707 / sqrt 2) = -17 on 1 df.
    assert c.p == pytest.approx(2 * (0.5 - math.atan(17) / math.pi))  # Student t(1) is Cauchy
    assert rows["se"].versus.verdict == "better"
    rows = {r.attention: r for r in rp.build_report([tmp_path], baseline="attention=se").rows}
    assert rows["mha"].versus.verdict == "worse"


def test_holm_runs_over_every_tested_row_of_the_table(tmp_path):
    rng = np.random.default_rng(0)
    for a, shift in {"none": 0.0, "mha": 0.01, "se": 0.02, "pool": 0.03}.items():
        for b in ("cnn", "transformer"):
            for seed in range(3):
                acc = 0.7 + shift + rng.normal(0, 0.01)
                write_results(tmp_path / f"{a}{b}{seed}", _results("mha", "cnn", seed, metrics={
                    "test/acc": acc, "test/f1": acc}, choices={"attention": a, "backbone": b,
                    "dataset": "mnist1d", "seed": seed}))  # fmt: skip
    rows = rp.build_report([tmp_path], baseline="attention=none").rows
    tested = [r for r in rows if r.versus.comparison is not None]
    assert len(tested) == 6  # 3 variants x 2 backbones: one family
    raw = [r.versus.comparison.p for r in tested]
    assert [r.versus.p_holm for r in tested] == pytest.approx(st.holm(raw))
    assert all(r.versus.p_holm >= r.versus.comparison.p for r in tested)


def _records(rng, seeds_of_baseline, mean_shift=0.0):
    """A synthetic set of results.json records: baseline none and mha, 3 seeds, acc ~ N(0.8,
    0.02); mha's mean shifted by ``mean_shift``."""
    out = []
    for attention, seeds, shift in (("none", seeds_of_baseline, 0.0), ("mha", (0, 1, 2), mean_shift)):
        for seed in seeds:
            acc = float(rng.normal(0.8 + shift, 0.02))
            data = _results("mha", "cnn", 0, metrics={"test/acc": acc, "test/f1": acc})
            data["choices"].update(attention=attention, seed=seed)
            out.append(parse_record(Path(f"{attention}{seed}"), data))
    return out


@pytest.mark.parametrize("seeds_of_baseline", [(0, 1, 2), (3, 4, 5)], ids=["paired", "welch"])
def test_cells_from_one_distribution_are_indistinguishable_at_the_nominal_rate(seeds_of_baseline):
    rng = np.random.default_rng(len(seeds_of_baseline) + seeds_of_baseline[0])
    n, flagged = 300, 0
    for _ in range(n):
        rows = rp.summarize(_records(rng, seeds_of_baseline))
        rp.compare_to_baseline(rows, "attention=none")
        (mha,) = [r for r in rows if r.attention == "mha"]
        assert mha.versus.comparison.test == ("paired" if seeds_of_baseline[0] == 0 else "welch")
        flagged += mha.versus.verdict != "indistinguishable"
    assert abs(flagged - n * 0.05) <= 3.5 * math.sqrt(n * 0.05 * 0.95), flagged / n


def test_one_seed_gets_no_test(tmp_path):
    write_results(tmp_path / "0", _results("mha", "cnn", 0))
    write_results(tmp_path / "1", _results("se", "cnn", 0))
    rows = {r.attention: r for r in rp.build_report([tmp_path], baseline="attention=mha").rows}
    assert rows["se"].versus.verdict == "no test" and math.isnan(rows["se"].versus.p_holm)
    assert rows["se"].versus.comparison.diff == pytest.approx(0.13)
    cells = {x["attention"]: x for x in _md_rows(tmp_path / rp.MD_FILE)}
    assert cells["se"]["verdict"] == "no test" and cells["se"]["p (Holm)"] == rp.MISSING
    assert cells["se"]["Δ vs baseline"] == "+13.00"


def test_a_bad_baseline_is_a_clear_error_before_reading(sweep):
    with pytest.raises(rp.ReportError, match="key 'backbone' is not allowed: one of attention"):
        rp.build_report([sweep], baseline="backbone=cnn")
    with pytest.raises(rp.ReportError, match="must be KEY=VALUE"):
        rp.build_report([sweep], baseline="none")
    with pytest.raises(rp.ReportError, match="matches no row; attention values: mha, se"):
        rp.build_report([sweep], baseline="attention=none")


def test_cli_baseline_flag_prints_the_verdicts(sweep, capsys):
    assert rp.main([str(sweep), "--baseline", "attention=mha", "--skip-unreadable"]) == 0
    out = capsys.readouterr().out
    assert "verdict" in out and "better" in out and "baseline" in out
    assert rp.main([str(sweep), "--baseline", "seed=0"]) == 2
    assert "'seed' is not allowed" in capsys.readouterr().err


def test_ranking_across_datasets(tmp_path):
    # mnist1d: se > mha > none; digits: mha > se > none (accuracies, higher is better).
    accs = {"mnist1d": {"se": 0.9, "mha": 0.8, "none": 0.7}, "digits": {"mha": 0.95, "se": 0.9, "none": 0.5}}
    for dataset, by_variant in accs.items():
        for attention, acc in by_variant.items():
            write_results(tmp_path / f"{dataset}{attention}", _results("mha", "cnn", 0, metrics={
                "test/acc": acc, "test/f1": acc}, choices={"attention": attention, "backbone": "cnn",
                "dataset": dataset, "seed": 0}))  # fmt: skip
    report = rp.build_report([tmp_path])
    ranking = {rr.variant: rr.ranks for rr in rp.rank_across_datasets(report.rows)}
    assert {v: r.mean for v, r in ranking.items()} == {"mha": 1.5, "se": 1.5, "none": 3.0}
    assert ranking["none"].std == 0 and ranking["mha"].std == pytest.approx(math.sqrt(0.5))
    md = (tmp_path / rp.MD_FILE).read_text()
    assert "## Ranking across datasets" in md
    assert "| cnn | none | 3.00 | 0.00 | 3–3 | 2 |" in md
    assert rp.rank_across_datasets([r for r in report.rows if r.dataset == "digits"]) == []


def test_ranking_keeps_rows_split_by_config_values_apart(tmp_path):
    # With --by, one variant has a row per value: each is ranked, none overwrites another.
    import dataclasses

    for dataset in ("mnist1d", "digits"):
        for attention, acc in {"se": 0.9, "mha": 0.8}.items():
            write_results(tmp_path / f"{dataset}{attention}", _results("mha", "cnn", 0, metrics={
                "test/acc": acc, "test/f1": acc}, choices={"attention": attention, "backbone": "cnn",
                "dataset": dataset, "seed": 0}))  # fmt: skip
    rows = rp.build_report([tmp_path]).rows
    split = [dataclasses.replace(r, labels={"backbone.dim": dim}) for r in rows for dim in (64, 128)]
    names = {rr.variant for rr in rp.rank_across_datasets(split)}
    assert names == {f"{v} (backbone.dim={d})" for v in ("se", "mha") for d in (64, 128)}
    # A --by value that goes with the dataset (Zoology: the length names it) leaves every split
    # ranked in one dataset only: no ranking, rather than a table of single ranks.
    one_each = [dataclasses.replace(r, labels={"dataset.seq_len": r.dataset}) for r in rows]
    assert rp.rank_across_datasets(one_each) == []
