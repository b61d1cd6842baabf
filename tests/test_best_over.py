"""Rows split by config values and the best run per cell over a swept key (``attnexp.report.best_over``),
and Zoology's accuracy-against-width figure, on synthetic run dirs."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest
import yaml
from omegaconf import OmegaConf

from attnexp import report as rp
from attnexp.report.best_over import best_column, config_value, summarize_by
from attnexp.report.build import build_report
from attnexp.report.rows import ReportError
from attnexp.report.zoology_figure import FIGURE_FILE, line_names
from attnexp.runs.record import load_record, read_results, write_results
from attnexp.sweep import SweepSummary
from attnexp.tasks.spec import classification, language_modelling

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LR = "optim.optimizer.lr"
DIM = "backbone.dim"
SEQ = "dataset.seq_len"
LR_COL = best_column(LR)


def make_run(root, name, *, attention="mha", dim=64, seq_len=64, lr=1e-3, seed=0, val=None,
             test=None, lm=False, status="completed", config=None, backbone="transformer",
             dataset="zoology_mqar", state=None):  # fmt: skip
    """A run dir: results.json with the validation objective and test metrics given, and the
    saved .hydra/config.yaml holding the swept keys."""
    task = language_modelling() if lm else classification(10)
    metrics = {}
    if status == "completed":
        objective, primary = ("val/loss_best", "test/loss") if lm else ("val/acc_best", "test/acc")
        metrics = {objective: val, primary: test, "test/acc": test}
    run = root / name
    write_results(run, {
        "status": status, "error": None if status == "completed" else "E: died",
        "choices": {"attention": attention, "backbone": backbone, "dataset": dataset,
                    "seed": seed, "experiment": None},
        "task": task.to_json(), "metrics": metrics,
        **({} if state is None else {"state_floats": state}),
    })  # fmt: skip
    cfg = config or {"seed": seed, "backbone": {"dim": dim}, "dataset": {"seq_len": seq_len},
                     "optim": {"optimizer": {"lr": lr}}}  # fmt: skip
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def rows_of(root, by=(), best_over=None):
    runs = [load_record(p) for p in sorted(root.glob("*/results.json"))]
    return summarize_by(runs, by, best_over)


def test_the_best_lr_is_picked_per_cell_by_validation_not_test(tmp_path):
    # d=64: lr 1e-3 validates best though 1e-2 tests best; d=128: 1e-2 validates best.
    for i, (dim, lr, val, test) in enumerate([
        (64, 1e-4, 0.50, 0.51), (64, 1e-3, 0.90, 0.80), (64, 1e-2, 0.85, 0.95),
        (128, 1e-4, 0.40, 0.41), (128, 1e-3, 0.70, 0.72), (128, 1e-2, 0.99, 0.97),
    ]):  # fmt: skip
        make_run(tmp_path, f"{i}", dim=dim, lr=lr, val=val, test=test)
    rows = rows_of(tmp_path, by=[DIM], best_over=LR)
    assert [(r.labels[DIM], r.labels[LR_COL]) for r in rows] == [(64, 1e-3), (128, 1e-2)]
    assert [r.stat("test/acc").mean for r in rows] == [0.80, 0.97]
    assert [r.n_seeds for r in rows] == [1, 1]


def test_a_min_objective_picks_the_lowest_validation_loss(tmp_path):
    for i, (lr, val, test) in enumerate([(1e-4, 2.0, 1.0), (1e-3, 0.5, 0.9), (1e-2, 0.7, 0.3)]):
        make_run(tmp_path, f"{i}", lr=lr, val=val, test=test, lm=True)
    (row,) = rows_of(tmp_path, best_over=LR)
    assert row.labels == {LR_COL: 1e-3}
    assert row.stat("test/loss").mean == 0.9


def test_a_run_is_picked_by_its_own_recorded_objective(tmp_path):
    # Language models whose config optimises val/acc_best (Zoology's runs): the lr with the best
    # validation accuracy wins, though another has the lower validation loss.
    task = replace(language_modelling(), objective="val/acc_best")
    for i, (lr, loss, acc, test) in enumerate([(1e-3, 0.1, 0.90, 0.91), (1e-2, 0.3, 0.99, 0.98)]):
        run = make_run(tmp_path, f"{i}", lr=lr, val=loss, test=test, lm=True)
        record = read_results(run)
        record["task"] = task.to_json()
        record["metrics"]["val/acc_best"] = acc
        write_results(run, record)
    (row,) = rows_of(tmp_path, best_over=LR)
    assert row.labels == {LR_COL: 1e-2}


def test_over_seeds_the_best_mean_validation_wins_and_all_its_seeds_are_reported(tmp_path):
    # lr 1e-3 holds the single best run (0.95), but 1e-2 is better on average (0.8 vs 0.7).
    for i, (lr, seed, val, test) in enumerate([
        (1e-3, 0, 0.95, 0.9), (1e-3, 1, 0.45, 0.4), (1e-2, 0, 0.8, 0.6), (1e-2, 1, 0.8, 0.7),
    ]):  # fmt: skip
        make_run(tmp_path, f"{i}", lr=lr, seed=seed, val=val, test=test)
    (row,) = rows_of(tmp_path, best_over=LR)
    assert row.labels[LR_COL] == 1e-2 and row.n_seeds == 2
    assert row.stat("test/acc").mean == pytest.approx(0.65)
    assert row.stat("test/acc").std == pytest.approx(math.sqrt(0.005))


def test_a_tie_goes_to_the_smallest_value_and_failures_of_the_cell_are_counted(tmp_path):
    make_run(tmp_path, "0", lr=1e-2, val=0.9, test=0.1)
    make_run(tmp_path, "1", lr=1e-3, val=0.9, test=0.2)
    make_run(tmp_path, "2", lr=1e-4, status="failed")
    make_run(tmp_path, "3", attention="linear", lr=1e-4, status="failed")
    rows = {r.attention: r for r in rows_of(tmp_path, best_over=LR)}
    assert rows["mha"].labels[LR_COL] == 1e-3 and rows["mha"].stat("test/acc").mean == 0.2
    assert (rows["mha"].n_seeds, rows["mha"].n_failed) == (1, 1)
    # A cell where nothing completed has no winner, and still shows its failure.
    assert rows["linear"].labels[LR_COL] is None
    assert (rows["linear"].n_seeds, rows["linear"].n_failed) == (0, 1)


def test_by_splits_rows_into_columns_of_the_table_csv_and_markdown(tmp_path):
    for i, (dim, seq_len) in enumerate([(64, 64), (128, 64), (64, 128), (128, 128)]):
        make_run(tmp_path, f"{i}", dim=dim, seq_len=seq_len, val=0.5, test=0.5 + i / 10)
    (merged,) = rows_of(tmp_path)  # without --by the four widths/lengths average into one row
    assert merged.n_seeds == 4

    report = build_report([tmp_path], by=[DIM, SEQ])
    assert [(r.labels[DIM], r.labels[SEQ]) for r in report.rows] == [
        (64, 64), (64, 128), (128, 64), (128, 128)
    ]
    with open(tmp_path / rp.CSV_FILE) as f:
        table = list(csv.DictReader(f))
    assert {(int(t[DIM]), int(t[SEQ]), float(t["test_acc_mean"])) for t in table} == {
        (64, 64, 0.5), (128, 64, 0.6), (64, 128, 0.7), (128, 128, 0.8)
    }  # fmt: skip
    md = (tmp_path / rp.MD_FILE).read_text()
    assert f"| {DIM} | {SEQ} |" in md and "| 128 | 64 | 60.00 ± – |" in md


def test_the_width_figure_is_written_when_rows_split_by_width_and_length(tmp_path):
    for i, (attention, dim, seq_len, lr, val) in enumerate([
        ("mha", 64, 64, 1e-3, 0.99), ("mha", 128, 64, 1e-3, 0.99), ("mha", 64, 128, 1e-3, 0.9),
        ("linear", 64, 64, 1e-3, 0.3), ("linear", 64, 64, 1e-2, 0.4), ("linear", 128, 128, 1e-3, 0.5),
    ]):  # fmt: skip
        make_run(tmp_path, f"{i}", attention=attention, dim=dim, seq_len=seq_len, lr=lr, val=val,
                 test=val)  # fmt: skip
    out = tmp_path / "report"
    assert rp.main([str(tmp_path), "--out", str(out), "--by", DIM, "--by", SEQ,
                    "--best-over", LR]) == 0  # fmt: skip
    assert (out / FIGURE_FILE).read_bytes().startswith(PNG_MAGIC)
    md = (out / rp.MD_FILE).read_text()
    assert f"![zoology_accuracy]({FIGURE_FILE})" in md and f"`{LR_COL}`" in md
    assert "| linear | 64 | 64 | 0.01 | 40.00 ± – |" in md

    plain = tmp_path / "plain"
    build_report([tmp_path], plain, by=[DIM])  # no sequence-length panels: no figure
    assert not (plain / FIGURE_FILE).exists()


def test_the_width_figure_adds_a_row_against_the_state_size_when_every_run_recorded_it(tmp_path, monkeypatch):
    from attnexp.report import zoology_figure

    shapes = []
    original = zoology_figure.new_figure
    monkeypatch.setattr(zoology_figure, "new_figure", lambda *a, **k: shapes.append(a[:2]) or original(*a, **k))
    for i, (attention, dim, state) in enumerate([("mha", 64, 8192), ("mha", 128, 16384), ("gla", 64, 512)]):
        make_run(tmp_path, f"{i}", attention=attention, dim=dim, val=0.5, test=0.5, state=state)
    build_report([tmp_path], tmp_path / "with", by=[DIM, SEQ])
    make_run(tmp_path, "3", attention="linear", val=0.5, test=0.5)  # no state recorded
    build_report([tmp_path], tmp_path / "without", by=[DIM, SEQ])
    assert shapes == [(2, 1), (1, 1)]  # rows: width and state size, then width alone


def test_config_values_resolve_interpolations_and_keep_hydra_runtime_ones_as_written(tmp_path):
    run = make_run(tmp_path, "0", val=0.5, test=0.5, config={
        "width": 96, "backbone": {"dim": "${width}"},
        "choices": {"attention": "${hydra:runtime.choices.attention}"},
    })  # fmt: skip
    assert config_value(run, DIM) == 96
    assert config_value(run, "choices.attention") == "${hydra:runtime.choices.attention}"


@pytest.mark.parametrize(
    "by, best_over, message",
    [
        ([DIM, "backbone.dimm"], None, "--by backbone.dimm: no such key in"),
        ([], "optim.lr", "--best-over optim.lr: no such key in"),
        ([LR], LR, "is both a --by and the --best-over key"),
        ("backbone.dim", None, "report_by must be a list of config keys"),
    ],
)
def test_bad_keys_are_refused_by_name(tmp_path, by, best_over, message):
    make_run(tmp_path, "0", val=0.5, test=0.5)
    with pytest.raises(ReportError, match=message):
        build_report([tmp_path], by=by, best_over=best_over)


def test_a_run_without_its_saved_config_is_named_and_the_command_exits_2(tmp_path, capsys):
    run = make_run(tmp_path, "0", val=0.5, test=0.5)
    (run / ".hydra" / "config.yaml").unlink()
    assert rp.main([str(tmp_path), "--by", DIM]) == 2
    err = capsys.readouterr().err
    assert "--by backbone.dim" in err and "config.yaml does not exist" in err


def test_a_sweep_reports_by_its_experiments_report_keys(tmp_path):
    for i, (dim, lr, val) in enumerate([(64, 1e-3, 0.9), (64, 1e-2, 0.95), (128, 1e-3, 0.7)]):
        make_run(tmp_path, f"{i}", dim=dim, lr=lr, val=val, test=val)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "logger": {},
                               "report_by": [DIM], "report_best_over": LR})  # fmt: skip
    SweepSummary().on_multirun_end(config)
    with open(tmp_path / rp.CSV_FILE) as f:
        table = list(csv.DictReader(f))
    assert [(t[DIM], t[LR_COL], t["test_acc_mean"]) for t in table] == [
        ("64", "0.01", "0.95"), ("128", "0.001", "0.7")
    ]  # fmt: skip


def test_a_sweep_compares_with_its_experiments_report_baseline(tmp_path):
    for i, (attention, seed, test) in enumerate([
        ("none", 0, 0.50), ("none", 1, 0.52), ("mha", 0, 0.90), ("mha", 1, 0.91),
    ]):  # fmt: skip
        make_run(tmp_path, f"{i}", attention=attention, seed=seed, val=test, test=test)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "logger": {},
                               "report_baseline": "attention=none"})  # fmt: skip
    SweepSummary().on_multirun_end(config)
    with open(tmp_path / rp.CSV_FILE) as f:
        table = {t["attention"]: t for t in csv.DictReader(f)}
    assert table["none"]["verdict"] == rp.BASELINE
    assert table["mha"]["baseline"] == "none"
    assert float(table["mha"]["delta"]) == pytest.approx(0.395)


def test_a_line_per_variant_though_backbone_and_dataset_names_carry_the_width_and_length(tmp_path):
    # experiment=zoology_mqar names its backbones transformer-d<dim> and datasets zoology_mqar-L<len>.
    for i, (attention, dim, seq_len) in enumerate(
        [(a, d, n) for a in ("mha", "linear") for d in (64, 128) for n in (64, 128)]
    ):
        make_run(tmp_path, f"{i}", attention=attention, dim=dim, seq_len=seq_len, val=0.5,
                 test=0.5, backbone=f"transformer-d{dim}", dataset=f"zoology_mqar-L{seq_len}")  # fmt: skip
    rows = build_report([tmp_path], tmp_path / "out", by=[DIM, SEQ]).rows
    assert sorted(zip(line_names(rows), (r.attention for r in rows), strict=True)) == sorted(
        [("linear", "linear")] * 4 + [("mha", "mha")] * 4
    )

    # Two backbones at one width and length: the backbone joins the line's name, only then.
    make_run(tmp_path, "cnn", dim=64, seq_len=64, val=0.5, test=0.5, backbone="cnn",
             dataset="zoology_mqar-L64")  # fmt: skip
    rows = build_report([tmp_path], tmp_path / "out", by=[DIM, SEQ]).rows
    names = line_names(rows)
    points = {(n, r.labels[DIM], r.labels[SEQ]) for n, r in zip(names, rows, strict=True)}
    assert len(points) == len(rows) == 9
    assert "mha / cnn" in names and "mha / transformer-d64" in names and "linear" not in names


def test_select_seeds_picks_the_value_on_those_seeds_and_reports_the_fresh_ones(tmp_path):
    """Seed 0 picks lr 1e-2 (its lucky validation); the row reports seeds 1 and 2 at 1e-2, not
    seed 0's run, and names the value; the plain selection would keep 1e-3 (best over all seeds)."""
    for seed, lr, val, test in [(0, 1e-2, 0.9, 0.95), (0, 1e-3, 0.5, 0.5),
                                (1, 1e-2, 0.4, 0.30), (1, 1e-3, 0.8, 0.8),
                                (2, 1e-2, 0.4, 0.40), (2, 1e-3, 0.8, 0.8)]:  # fmt: skip
        make_run(tmp_path, f"{seed}-{lr}", seed=seed, lr=lr, val=val, test=test)
    runs = [load_record(p) for p in sorted(tmp_path.glob("*/results.json"))]
    (fresh,) = summarize_by(runs, (), LR, select_seeds=[0])
    assert fresh.labels[LR_COL] == 1e-2 and fresh.n_seeds == 2
    assert fresh.stat("test/acc").mean == pytest.approx(0.35)  # seeds 1 and 2, not seed 0's 0.95
    (same_runs,) = summarize_by(runs, (), LR)
    assert same_runs.labels[LR_COL] == 1e-3  # mean val 0.7 against 0.567
    report = build_report([tmp_path], tmp_path / "out", best_over=LR, select_seeds=[0])
    assert "completed runs of seeds 0 have the best" in (tmp_path / "out" / rp.MD_FILE).read_text()
    assert report.rows[0].n_seeds == 2


def test_select_seeds_needs_best_over_and_integer_seeds(tmp_path, capsys):
    make_run(tmp_path, "0", val=0.5, test=0.5)
    with pytest.raises(ReportError, match="--select-seeds picks the --best-over value: give --best-over too"):
        build_report([tmp_path], select_seeds=[0])
    with pytest.raises(SystemExit):
        rp.main([str(tmp_path), "--best-over", LR, "--select-seeds", "zero"])
    assert "comma-separated integer seeds, got 'zero'" in capsys.readouterr().err


def test_a_cell_without_fresh_seeds_at_its_chosen_value_is_a_row_of_no_seeds(tmp_path):
    """Seed 0 picks 1e-2 in both cells; only the first has a seed 1 there (the second's seed 1 ran
    at the other rate): the second row reports no seed instead of failing the report."""
    for seq_len, seed, lr, val, test in [(64, 0, 1e-2, 0.9, 0.9), (64, 0, 1e-3, 0.5, 0.5),
                                         (64, 1, 1e-2, 0.8, 0.7),
                                         (128, 0, 1e-2, 0.9, 0.9), (128, 0, 1e-3, 0.5, 0.5),
                                         (128, 1, 1e-3, 0.8, 0.6)]:  # fmt: skip
        make_run(tmp_path, f"{seq_len}-{seed}-{lr}", seq_len=seq_len, seed=seed, lr=lr, val=val, test=test)
    runs = [load_record(p) for p in sorted(tmp_path.glob("*/results.json"))]
    rows = {r.labels[SEQ]: r for r in summarize_by(runs, (SEQ,), LR, select_seeds=[0])}
    assert rows[64].labels[LR_COL] == 1e-2 and rows[64].n_seeds == 1
    assert rows[64].stat("test/acc").mean == pytest.approx(0.7)
    assert rows[128].labels[LR_COL] == 1e-2 and rows[128].n_seeds == 0 and rows[128].n_failed == 0
    assert math.isnan(rows[128].stat("test/acc").mean)
    report = build_report([tmp_path], tmp_path / "out", by=[SEQ], best_over=LR, select_seeds=[0])
    assert [r.n_seeds for r in report.rows] == [1, 0]
