"""Learning curves in the comparison report (``attnexp.report.curves``), on synthetic run dirs whose
CSV logs hold known numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from attnexp import report as rp
from attnexp.report import curves as cv
from attnexp.runs.layout import METRICS_CSV
from attnexp.runs.record import write_results
from attnexp.tasks.spec import language_modelling
from tests.conftest import compose_cfg
from tests.test_report import _results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "epoch,step,test/acc,train/loss,val/acc,val/acc_best,val/loss\n"


def write_log(run_dir: Path, points: list[tuple[int, int, float]]) -> Path:
    """A Lightning-like CSV log: train-loss lines between validation lines ``(epoch, step,
    val/acc)``, and a test line at the end that must not count as a validation point."""
    lines = [HEADER]
    for epoch, step, acc in points:
        lines.append(f"{epoch},{step - 1},,0.9,,,\n")
        lines.append(f"{epoch},{step},,,{acc},{acc},1.5\n")
    lines.append(f"{epoch},{step},0.123,,,,\n")
    path = run_dir / METRICS_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


# Two seeds per cell, known validation accuracies at steps 10, 20, 30.
ACCS = {0: [0.1, 0.4, 0.5], 1: [0.3, 0.6, 0.9]}
STEPS = [10, 20, 30]


def make_run(root: Path, attention: str, backbone: str, seed: int, dataset: str = "mnist1d",
             log: bool = True) -> Path:  # fmt: skip
    run = root / f"{dataset}-{backbone}-{attention}-{seed}"
    write_results(run, _results(attention, backbone, seed, dataset=dataset))
    if log:
        shift = 0.05 if attention == "se" else 0.0  # the variants' curves differ
        points = zip(STEPS, ACCS[seed], strict=True)
        write_log(run, [(epoch, s, a + shift) for epoch, (s, a) in enumerate(points)])
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 datasets x 2 backbones x 2 variants x 2 seeds, every run with its CSV log."""
    root = tmp_path / "sweep"
    for dataset in ("mnist1d", "digits"):
        for backbone in ("transformer", "cnn"):
            for attention in ("mha", "se"):
                for seed in ACCS:
                    make_run(root, attention, backbone, seed, dataset)
    return root


def test_mean_and_min_max_band_on_a_known_case():
    x, mean, low, high = cv.aggregate([{10: 0.1, 20: 0.2, 30: 0.3}, {10: 0.3, 20: 0.4, 30: 0.5},
                                       {10: 0.2, 20: 0.6, 30: 0.7}])  # fmt: skip
    assert x == [10, 20, 30]
    assert mean == pytest.approx([0.2, 0.4, 0.5])
    assert low == [0.1, 0.2, 0.3] and high == [0.3, 0.6, 0.7]


def test_only_the_steps_every_seed_logged_are_kept():
    x, mean, low, high = cv.aggregate([{10: 1.0, 20: 2.0, 30: 3.0}, {10: 3.0, 20: 4.0}])
    assert x == [10, 20] and mean == [2.0, 3.0] and low == [1.0, 2.0] and high == [3.0, 4.0]


def test_a_log_reads_its_validation_points_by_step_and_epoch(tmp_path):
    path = write_log(tmp_path, [(0, 10, 0.5), (1, 20, 0.7)])
    # A resumed run logs step 20 again: the later line wins.
    path.write_text(path.read_text() + "1,20,,,0.8,0.8,1.0\n")
    series = cv.read_log(path, "val/acc")
    assert series == {"step": {10: 0.5, 20: 0.8}, "epoch": {0: 0.5, 1: 0.8}}
    assert cv.read_log(path, "val/nothing") == {"step": {}, "epoch": {}}


def test_the_plotted_metric_is_the_primary_one_at_validation(sweep):
    row = rp.build_report([sweep]).rows[0]
    assert cv.val_key(row) == "val/acc"
    row.task = language_modelling()
    assert cv.val_key(row) == "val/loss"


def test_one_figure_per_dataset_and_backbone_with_the_seed_statistics(sweep):
    report = rp.build_report([sweep])
    expected = {sweep / f"curves_{d}_{b}.png" for d in ("mnist1d", "digits")
                for b in ("transformer", "cnn")}  # fmt: skip
    assert set(report.curves.files) == expected
    assert set(report.files) >= expected
    for path in expected:
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(report.curves.curves) == 8  # one per row
    for c in report.curves.curves:
        shift = 0.05 if c.row.attention == "se" else 0.0
        assert (c.key, c.x_name, c.x, c.n_runs) == ("val/acc", "step", STEPS, 2)
        assert c.mean == pytest.approx([0.2 + shift, 0.5 + shift, 0.7 + shift])
        assert c.low == pytest.approx([a + shift for a in ACCS[0]])
        assert c.high == pytest.approx([a + shift for a in ACCS[1]])
    md = (sweep / rp.MD_FILE).read_text()
    assert "## Learning curves" in md
    for path in expected:
        assert f"![{path.stem}]({path.name})" in md
    assert not report.curves.no_log and not report.curves.unreadable and not report.curves.notes


def test_runs_without_a_log_are_left_out_with_a_note(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "mha", "cnn", 0)
    make_run(root, "mha", "cnn", 1, log=False)  # logger=none: no CSV
    for seed in ACCS:  # a whole figure without logs
        make_run(root, "se", "transformer", seed, log=False)
    report = rp.build_report([root])
    assert report.curves.files == [root / "curves_mnist1d_cnn.png"]
    (curve,) = report.curves.curves
    assert curve.n_runs == 1 and curve.mean == pytest.approx(ACCS[0])
    assert len(report.curves.no_log) == 3
    md = (root / rp.MD_FILE).read_text()
    assert "Left out, no CSV log (3 runs" in md
    assert "mnist1d-transformer-se-0" in md and "mnist1d-cnn-mha-1" in md
    assert "![curves_mnist1d_transformer]" not in md


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty file"),
        ("a,b\n1,2\n", "no step or epoch column"),
        (HEADER + "0,10,,,high,,\n", "line 2: a non-number in val/acc"),
        (HEADER + "0,10,,,0.5,,,,9\n", "line 2 has more fields than the header"),
        (HEADER + "0,9,,0.9,,,\n", "no val/acc logged"),
        (b"\xff\xfe\x00garbage", "UnicodeDecodeError"),
    ],
)
def test_a_malformed_log_is_listed_and_the_report_goes_on(tmp_path, text, reason):
    root = tmp_path / "sweep"
    make_run(root, "mha", "cnn", 0)
    bad = make_run(root, "mha", "cnn", 1) / METRICS_CSV
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    report = rp.build_report([root])
    assert len(report.rows) == 1 and report.rows[0].n_seeds == 2  # the table is untouched
    ((path, why),) = report.curves.unreadable
    assert path == bad and reason in why
    assert report.curves.curves[0].n_runs == 1
    md = (root / rp.MD_FILE).read_text()
    assert "Unreadable for curves (1)" in md and reason in md


def test_seeds_that_validated_at_different_steps_get_a_note(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "mha", "cnn", 0)
    write_log(make_run(root, "mha", "cnn", 1), [(0, 10, 0.3), (1, 20, 0.6)])  # stopped early
    report = rp.build_report([root])
    (curve,) = report.curves.curves
    assert curve.x == [10, 20] and curve.mean == pytest.approx([0.2, 0.5])
    (note,) = report.curves.notes
    assert "different steps" in note and "the 2 they share" in note
    assert note in (root / rp.MD_FILE).read_text()


def test_epoch_is_the_axis_when_a_log_has_no_step(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "mha", "cnn", 0)
    path = make_run(root, "mha", "cnn", 1) / METRICS_CSV
    cells = [line.split(",") for line in path.read_text().splitlines()]
    path.write_text("".join(",".join([c[0], *c[2:]]) + "\n" for c in cells))  # drop "step"
    (curve,) = rp.build_report([root]).curves.curves
    assert curve.x_name == "epoch" and curve.x == [0, 1, 2]
    assert curve.mean == pytest.approx([0.2, 0.5, 0.7])


def test_the_log_path_is_where_the_csv_logger_writes(tmp_path):
    cfg = compose_cfg(["logger=csv"], tmp_path)
    logger = instantiate(cfg.logger.csv)
    assert Path(logger.log_dir) / "metrics.csv" == tmp_path / METRICS_CSV
