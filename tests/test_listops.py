"""LRA ListOps: the generator against an independent evaluator, the tokeniser and the TSV loader
on files in the release's format, padding trimmed per batch, a source's own validation split,
LRA's learning-rate schedule, the experiments' configs and the GPU trainer's precision."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from attnexp.config.validate import validate
from attnexp.data import listops
from attnexp.data.datamodule import ArrayDataModule, EpochOrder, SliceLoader
from attnexp.data.shape import DataShape
from attnexp.tasks.optim import warmup_rsqrt
from attnexp.training.pipeline import matmul_precision, set_matmul_precision
from tests.conftest import compose_cfg

NAMES = {i: t for t, i in listops.TOKEN_IDS.items()}
SMALL = dict(min_length=20, max_length=80, max_depth=4, max_args=10)


def evaluate(ids: list[int]) -> tuple[int, int, list[int]]:
    """An evaluator written apart from the generator: a stack over the tokens. Returns the value,
    the deepest operator nesting and every operator's argument count."""
    stack: list[list] = []
    depth, arities, value = 0, [], None
    for token in (NAMES[i] for i in ids):
        if token.startswith("["):
            stack.append([token])
            depth = max(depth, len(stack))
            continue
        if token == "]":
            op, *args = stack.pop()
            arities.append(len(args))
            ordered = sorted(args)
            mid = len(ordered) // 2
            median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
            v = {"[MIN": min(args), "[MAX": max(args), "[MED": int(median),
                 "[SM": sum(args) % 10}[op]  # fmt: skip
        else:
            v = int(token)
        if stack:
            stack[-1].append(v)
        else:
            value = v
    assert not stack and value is not None
    return value, depth, arities


def ids(text: str) -> list[int]:
    return [listops.TOKEN_IDS[t] for t in text.split()]


@pytest.mark.parametrize(
    "text, value",
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[SM 5 6 7 ]", 8),
        ("[MED 1 5 3 9 ]", 4),  # LRA's int(np.median): (3 + 5) / 2
        ("[MED 2 5 ]", 3),  # 3.5 cut to 3
        ("[MED 7 1 5 ]", 5),
        ("[MIN [MAX 1 2 ] [SM 9 9 ] 3 ]", 2),
        ("[SM [MED 9 9 8 ] [MAX 0 0 ] 4 ]", 3),
    ],
)
def test_known_answers(text, value):
    assert evaluate(ids(text))[0] == value
    # the generator's own operator semantics on the same arguments, one level
    op, *args = text.split()[:-1]
    if all(a.isdigit() for a in args):
        assert listops.apply(listops.TOKEN_IDS[op], [int(a) for a in args]) == value


def test_generator_facts():
    sequences, labels = listops.generate(150, **SMALL, seed=3)
    assert len(sequences) == len(labels) == 150
    assert len({tuple(s) for s in sequences}) == 150  # distinct, as LRA's set
    for seq, label in zip(sequences, labels, strict=True):
        assert SMALL["min_length"] < len(seq) < SMALL["max_length"]
        assert set(seq) <= set(range(1, listops.VOCAB_SIZE))  # never the padding id
        value, depth, arities = evaluate(seq)
        assert value == label
        assert depth <= SMALL["max_depth"] - 1  # the root is depth 1, max_depth holds digits
        assert all(2 <= a <= SMALL["max_args"] for a in arities)
    # every operator and every value occur; the classes are not one
    assert {listops.TOKEN_IDS[o] for o in listops.OPERATORS} <= {t for s in sequences for t in s}
    assert len(set(labels)) >= 5


def test_generator_is_seeded():
    a = listops.generate(20, **SMALL, seed=1)
    assert listops.generate(20, **SMALL, seed=1) == a
    assert listops.generate(20, **SMALL, seed=2) != a


def test_tokenize_drops_parentheses_keeps_the_bracket():
    # LRA's to_string of [MAX 2 9 [MIN 4 7 ] ]: each application in parentheses
    source = "( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )"
    assert listops.tokenize(source) == ids("[MAX 2 9 [MIN 4 7 ] ]")
    assert listops.tokenize(source) == [12, 3, 10, 11, 5, 8, 15, 15]  # the documented table
    with pytest.raises(ValueError, match="unknown token 'FIRST'"):
        listops.tokenize("( [MAX FIRST )")


def test_generated_splits_are_cached(tmp_path, monkeypatch):
    args = dict(num_train=30, num_val=5, num_test=7, **SMALL, seed=0)
    x_tr, y_tr, x_va, y_va, x_te, y_te = listops.load_listops(str(tmp_path), **args)
    assert [len(y) for y in (y_tr, y_va, y_te)] == [30, 5, 7]
    assert x_tr.shape == (30, SMALL["max_length"]) and x_tr.dtype == np.uint8
    for row, label in zip(x_tr, y_tr, strict=True):  # padded after the end, labels kept
        n = int((row != listops.PAD).sum())
        assert (row[n:] == listops.PAD).all() and evaluate(row[:n].tolist())[0] == label

    def fail(*a, **k):
        raise AssertionError("generated again despite the cache")

    monkeypatch.setattr(listops, "generate", fail)
    again = listops.load_listops(str(tmp_path), **args)
    assert all(np.array_equal(a, b) for a, b in zip(again, (x_tr, y_tr, x_va, y_va, x_te, y_te),
                                                    strict=True))  # fmt: skip
    with pytest.raises(AssertionError, match="generated again"):
        listops.load_listops(str(tmp_path), **{**args, "seed": 1})  # another key


def write_release(directory, rows_by_split, header=("Source", "Target")):
    """Files as LRA's listops.py writes them: csv.writer, tab-delimited, a header row."""
    directory.mkdir(exist_ok=True)
    for split, rows in rows_by_split.items():
        with open(directory / f"basic_{split}.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            writer.writerows(rows)


RELEASE = {
    "train": [["( ( ( [SM 5 ) 6 ) ] )", 1], ["( ( ( [MAX 2 ) 9 ) ] )", 9]],
    "val": [["( ( ( ( [MED 1 ) 5 ) 3 ) ] )", 3]],
    "test": [["( ( ( [MIN 4 ) 7 ) ] )", 4]],
}


def test_tsv_release_is_read(tmp_path):
    write_release(tmp_path / "lra", RELEASE)
    x_tr, y_tr, x_va, y_va, x_te, y_te = listops.load_listops(
        str(tmp_path / "cache"), path=str(tmp_path / "lra"), max_length=6
    )
    assert x_tr.tolist() == [ids("[SM 5 6 ]") + [0, 0], ids("[MAX 2 9 ]") + [0, 0]]
    assert y_tr.tolist() == [1, 9] and y_va.tolist() == [3] and y_te.tolist() == [4]
    assert x_va.tolist() == [ids("[MED 1 5 3 ]") + [0]]
    # cut to max_length as LRA's pipeline
    short = listops.load_listops(str(tmp_path / "cache"), path=str(tmp_path / "lra"), max_length=3)
    assert short[0].tolist() == [ids("[SM 5 6"), ids("[MAX 2 9")]


@pytest.mark.parametrize(
    "rows, header, match",
    [
        (None, ("Source", "Target"), r"dataset.path=.* basic_train.tsv, basic_val.tsv, basic_test"),
        ({"train": [["( [SM 5 ) ]", 5]]}, ("Input", "Label"), r"line 1: the header must name"),
        ({"train": [["( [SM 5 ) ]", 12]]}, ("Source", "Target"), r"line 2: Target must be .*'12'"),
        ({"train": [["( [AVG 5 ) ]", 5]]}, ("Source", "Target"), r"line 2: unknown token '\[AVG'"),
        ({"train": [["( [SM 5 ) ]"]]}, ("Source", "Target"), r"line 2: 1 fields, the header has 2"),
    ],
)
def test_tsv_errors_name_the_path_and_layout(tmp_path, rows, header, match):
    release = {**RELEASE, **(rows or {})}
    if rows is None:
        release.pop("val")
    write_release(tmp_path / "lra", release, header)
    with pytest.raises(ValueError, match=match) as e:
        listops.load_listops(str(tmp_path / "cache"), path=str(tmp_path / "lra"), max_length=8)
    assert "dataset.path" in str(e.value) and "Source<TAB>Target" in str(e.value)


def test_trim_padding_cuts_each_batch_to_its_longest_sample():
    lengths = [3, 7, 2, 5, 1, 4]
    x = torch.zeros(6, 10, dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.arange(1, n + 1)
    y = torch.arange(6)
    order = EpochOrder(6, shuffle=True, seed=4)
    trimmed = list(SliceLoader(x, y, 2, order, trim_pad_index=0))
    full = list(SliceLoader(x, y, 2, order))
    for (xt, yt), (xf, yf) in zip(trimmed, full, strict=True):
        assert torch.equal(yt, yf)
        assert xt.shape[1] == max(lengths[i] for i in yf.tolist())
        assert torch.equal(xt, xf[:, : xt.shape[1]]) and (xf[:, xt.shape[1] :] == 0).all()


def test_trim_padding_needs_a_pad_index():
    shape = DataShape("tokens", [4], num_classes=2, vocab_size=5)
    with pytest.raises(ValueError, match="dataset.trim_padding=true .* needs dataset.shape.pad"):
        ArrayDataModule(lambda: None, shape, trim_padding=True)


def test_a_source_with_its_own_validation_split():
    shape = DataShape("tokens", [3], num_classes=2, vocab_size=5, pad_index=0)
    x = np.array([[1, 2, 0], [1, 0, 0], [3, 3, 3], [4, 0, 0]])
    y = np.array([0, 1, 1, 0])
    six = lambda: (x[:2], y[:2], x[2:3], y[2:3], x[3:], y[3:])  # noqa: E731
    dm = ArrayDataModule(six, shape, batch_size=2, val_fraction=None, trim_padding=True)
    splits = dm.load()
    assert splits["val"][0].tolist() == [[3, 3, 3]] and splits["test"][1].tolist() == [0]
    assert [b[0].tolist() for b in dm.val_dataloader()] == [[[3, 3, 3]]]
    assert [b[0].shape[1] for b in dm.test_dataloader()] == [1]
    with pytest.raises(ValueError, match="dataset.val_fraction must be null"):
        ArrayDataModule(six, shape, batch_size=2, val_fraction=0.1).load()
    with pytest.raises(ValueError, match=r"dataset.val_fraction must be in \(0, 1\)"):
        ArrayDataModule(lambda: six()[:2] + six()[4:], shape, val_fraction=None).load()


def test_rsqrt_schedule_known_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_rsqrt(opt, total_steps=10_000, warmup_steps=100)
    lrs = []
    for _ in range(401):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[50] == pytest.approx(1.0) and lrs[100] == pytest.approx(2.0)
    assert lrs[400] == pytest.approx(1.0)  # 2 x sqrt(100 / 400)
    # LRA's factor form: 0.05 x min(1, s / 1000) / sqrt(max(s, 1000)), with lr its peak
    peak = 0.05 / math.sqrt(1000)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = warmup_rsqrt(opt, total_steps=5000, warmup_steps=1000)
    for step in range(5001):
        if step in (0, 1, 999, 1000, 1001, 2500, 5000):
            lra = 0.05 * min(1.0, step / 1000) / math.sqrt(max(step, 1000))
            assert opt.param_groups[0]["lr"] == pytest.approx(lra, rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="optim.scheduler.warmup_steps must be a positive"):
        warmup_rsqrt(opt, 10, warmup_steps=0)


def test_listops_experiment_is_lras_base(tmp_path):
    cfg = compose_cfg(["experiment=listops", "attention=mha", f"paths.data_dir={tmp_path}"])
    assert (cfg.backbone.depth, cfg.backbone.dim, cfg.backbone.mlp_ratio) == (6, 512, 4.0)
    assert cfg.dataset.batch_size == 32 and cfg.trainer.max_steps == 5000
    assert list(cfg.dataset.shape.grid) == [2000] and cfg.dataset.shape.pad_index == 0
    assert cfg.dataset.num_train + cfg.dataset.num_val + cfg.dataset.num_test == 100_000
    assert cfg.optim.optimizer.lr == pytest.approx(0.05 / math.sqrt(1000), rel=1e-4)
    assert cfg.optim.optimizer.weight_decay == 0.1 and cfg.optim.scheduler.warmup_steps == 1000
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.backbone.readout == "cls"
    small = ["dataset.num_train=40", "dataset.num_val=8", "dataset.num_test=8",
             "dataset.min_length=20", "dataset.max_length=80", "dataset.max_depth=4",
             "dataset.batch_size=8", "trainer=cpu"]  # fmt: skip
    validate(compose_cfg(["experiment=listops", "attention=mha", f"paths.data_dir={tmp_path}",
                          "backbone.dim=16", "backbone.depth=1", *small]))  # fmt: skip


@pytest.mark.parametrize("attention", ["none", "mha", "pool"])
def test_listops_small_validates(tmp_path, attention):
    cfg = compose_cfg(["experiment=listops_small", f"attention={attention}",
                       f"paths.data_dir={tmp_path}", "dataset.num_train=200"])  # fmt: skip
    assert cfg.trainer.accelerator == "cpu" and list(cfg.dataset.shape.grid) == [250]
    validate(cfg)


def test_gpu_trainer_precision():
    cfg = compose_cfg(["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert matmul_precision(True, "bf16-mixed") == "high"  # TF32 for the float32 matmuls
    assert matmul_precision(True, "32-true") == "highest"  # full float32 on request
    assert matmul_precision(False, "bf16-mixed") is None  # a CPU's setting is left alone


def test_set_matmul_precision_applies_only_on_a_gpu():
    before = torch.get_float32_matmul_precision()
    try:
        set_matmul_precision(False, "bf16-mixed")
        assert torch.get_float32_matmul_precision() == before
        set_matmul_precision(True, "bf16-mixed")
        assert torch.get_float32_matmul_precision() == "high"
        set_matmul_precision(True, "32-true")
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)
