"""The benchmark suite: the smoke run covers every discovered variant with finite timings and
passing numeric checks; a check can fail; the measuring tools answer known cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from attnexp.attention import Kind
from attnexp.attention.cbam import CBAM
from attnexp.attention.design import NORMALIZATIONS, SCORES
from attnexp.attention.mha import MultiHeadAttention
from attnexp.attention.muse import MUSE
from attnexp.attention.se import SqueezeExcite
from attnexp.bench import references as refs
from attnexp.bench import suite
from attnexp.bench.measure import (
    median_times,
    next_token_loss,
    peak_memory_bytes,
    plain_loop_throughput,
    random_windows,
    shuffled_batches,
    timed_peak_memory,
)
from attnexp.bench.suite import main, mixers, numeric_check, randomise_constants
from attnexp.bench.tables import design_scaling_report, evaluate_targets, memory_exponent
from attnexp.config.attention import available, create
from tests.conftest import SUBPROCESS_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # One thread: on a shared machine more threads than free cores make OpenMP spin for seconds.
    # set_num_threads is process-wide, so the thread count of the other tests is restored.
    threads = torch.get_num_threads()
    try:
        code = main(
            ["--smoke", "--out", str(out), "--threads", "1",
             "--override", f"paths.data_dir={data_dir}"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return code, json.loads(out.read_text()), out


def test_smoke_run_passes_and_covers_every_variant(smoke):
    code, results, out = smoke
    assert code == 0
    ours = [r for r in results["modules"] if r["implementation"] == "attnexp"]
    assert {r["variant"] for r in ours} == set(available())
    for row in results["modules"] + results["scaling"]:
        assert math.isfinite(row["ms"]) and row["ms"] > 0, row
        assert math.isfinite(row["peak_mb"]) and row["peak_mb"] >= 0, row
    scaled = {r["variant"] for r in results["scaling"]}
    assert scaled == {v for v in available() if create(v, 8).kind is Kind.MIXER}
    assert {"mha", "muse", "linear", "node"} <= scaled
    assert out.with_name("bench_scaling.png").stat().st_size > 0
    design = results["design_scaling"]  # every score x normalisation of mha, at every length
    assert {(r["variant"], r["n"]) for r in design} == {
        (f"{s}+{n}", length) for s in SCORES for n in NORMALIZATIONS for length in (16, 64)
    }
    assert all(r["ms"] > 0 and r["peak_mb"] > 0 for r in design)
    assert out.with_name("bench_design_scaling.png").stat().st_size > 0
    overhead = results["overhead"]
    (framework,), (plain,) = overhead["framework_samples_per_s"], overhead["plain_samples_per_s"]
    assert framework > 0 and plain > 0
    assert overhead["ratio"] == pytest.approx(framework / plain)
    assert overhead["choices"]["attention"] == "mha" and overhead["loggers"] == ["csv"]
    mfu = results["mfu"]  # on CPU: the arithmetic runs, no utilisation figure
    assert mfu["flops_per_step"] > 0 and mfu["achieved_tflop_per_s"] > 0 and mfu["mfu"] is None


def test_smoke_run_measures_the_language_model(smoke):
    _, results, _ = smoke
    lm = results["lm_overhead"]
    assert lm["task"] == "lm" and lm["unit"] == "steps" and lm["text"] == "synthetic"
    assert lm["choices"]["experiment"] == "shakespeare_char_cpu" and lm["context_len"] == 16
    for side in ("framework", "plain"):
        (windows,), (tokens,) = lm[f"{side}_samples_per_s"], lm[f"{side}_tokens_per_s"]
        assert windows > 0 and tokens == pytest.approx(16 * windows)
    causal = {(r["backbone"], r["variant"]): r for r in results["causal"]}
    assert set(causal) == {(b, v) for b in ("transformer", "cnn") for v in available()}
    for (backbone, variant), row in causal.items():
        if variant == "pool":  # refused with its message, never timed
            assert row["ms"] is None and "causal" in row["refused"] and row["met"] is None
            continue
        mha = causal[backbone, "mha"]["ms"]
        assert row["ms"] > 0 and row["over_baseline"] == pytest.approx(row["ms"] / mha)
        assert row["met"] == (row["over_baseline"] <= 2.0)


def test_smoke_run_checks_every_reference_numerically(smoke):
    _, results, _ = smoke
    checked = {(c["variant"], c["reference"]) for c in results["checks"]}
    gate_refs = {"timm SEModule", "timm CbamModule", "formula SE", "formula CBAM"}
    assert ("mha", "torch.nn.MultiheadAttention") in checked
    assert ("muse", "three-branch MUSE (matmul-softmax)") in checked
    assert ("muse", "three-branch MUSE (SDPA)") in checked
    assert {v for v, r in checked if r in gate_refs} == {"se", "cbam"}
    assert all(c["ok"] and c["max_abs_error"] <= 1e-5 for c in results["checks"])
    # Every reference timed is also checked, and the other way round.
    timed = {(r["variant"], r["implementation"]) for r in results["modules"]}
    assert checked == {t for t in timed if t[1] != "attnexp"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--variants", "nope"], "unknown variants ['nope']; discovered: base_conv, based, cbam, "),
        (["--threads", "0"], "--threads must be"),
        (["--design-scaling", "--lengths", "1"], "--lengths must be at least 2"),
    ],
)
def test_bad_arguments_are_refused_before_running(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def perturbed(module: nn.Module, name: str) -> nn.Module:
    """One entry changed: shifting all of them alike could cancel (a softmax's logits)."""
    with torch.no_grad():
        dict(module.named_parameters())[name].view(-1)[0] += 1e-2
    return module


@pytest.mark.parametrize(
    "make,reference,param",
    [
        (lambda: MultiHeadAttention(dim=32), refs.torch_mha, "attn.in_proj_weight"),
        (lambda: MUSE(dim=32), refs.three_branch_muse, "dy_paras"),
        (lambda: MUSE(dim=32), refs.sdpa_three_branch_muse, "convs.1.depth_conv.weight"),
        (lambda: SqueezeExcite(dim=32, grid_ndim=2), refs.formula_se, "fc2.bias"),
        (lambda: CBAM(dim=32, grid_ndim=2), refs.formula_cbam, "conv.weight"),
    ],
)
def test_numeric_check_reports_a_mismatch(make, reference, param):
    torch.manual_seed(0)
    module = make()
    randomise_constants(module)
    x = torch.randn(2, 4, 4, 32) if module.kind.value == "gate" else torch.randn(2, 10, 32)
    ref = reference(module)
    assert numeric_check(module, ref, x)["ok"]
    perturbed(ref.module, param)
    result = numeric_check(module, ref, x)
    assert not result["ok"] and result["max_abs_error"] > 1e-5


def test_a_failed_check_fails_the_run(tmp_path, monkeypatch):
    def wrong_references(module):
        found = refs.references_for(module)
        for reference in found:
            perturbed(reference.module, "attn.out_proj.bias")
        return found

    monkeypatch.setattr(suite, "references_for", wrong_references)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = main(["--smoke", "--variants", "mha", "--out", str(out), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 1
    assert not any(c["ok"] for c in json.loads(out.read_text())["checks"])


def test_randomise_constants_breaks_every_constant():
    module = CBAM(dim=32)
    muse = MUSE(dim=32)
    randomise_constants(module)
    randomise_constants(muse)
    assert muse.branch_logits.unique().numel() == 3
    assert module.spatial_norm.running_var.item() >= 0.5  # a valid variance
    assert module.spatial_norm.running_mean.item() != 0


def test_references_are_keyed_by_the_exact_class():
    """muse subclasses mha but gets its own references; a module without any gets none."""
    labels = {
        name: [r.label for r in refs.references_for(create(name, 32, 2))]
        for name in ("mha", "muse", "node")
    }
    assert labels["mha"] == ["torch.nn.MultiheadAttention"]
    assert labels["muse"] == ["three-branch MUSE (matmul-softmax)", "three-branch MUSE (SDPA)"]
    assert labels["node"] == []


def test_scaling_takes_the_mixers():
    assert mixers(["none", "mha", "se", "pool", "node"], []) == ["mha", "node"]


def test_peak_memory_counts_live_tensors():
    def step():
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # 4 MB, both alive
        del a
        c = b + 1  # 4 MB, a already freed
        return c

    peak = peak_memory_bytes(step, torch.device("cpu"))
    assert 8e6 <= peak < 9e6


def test_timed_peak_memory_times_the_profiled_step():
    def step():
        a = torch.ones(1000, 1000)  # 4 MB
        time.sleep(0.05)
        return a * 2

    seconds, peak = timed_peak_memory(step, torch.device("cpu"))
    assert seconds >= 0.05 and 8e6 <= peak < 9e6


# Chunked attention's score blocks (1 MiB each here, 128 of them) are allocated and freed while
# autograd's small long-lived objects are allocated between them: the pattern that made glibc's
# heap grow by the blocks at N = 16k.
FRAGMENTING_STEP = """
import re, sys, torch
from attnexp.attention.design import attend
from attnexp.util import memory
from attnexp.util.memory import mmap_large_allocations

def mib(key):  # VmRSS: resident now; VmHWM: the peak since the last reset
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1]) / 1024

memory.AUTO_MMAP = False  # only what this script sets: the chunked path would set its own
if sys.argv[1] == "mmap":
    assert mmap_large_allocations(2**18)
q, k, v = (torch.randn(1, 2, 4096, 16, requires_grad=True) for _ in range(3))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to the resident size now: imports do not count
before = mib("VmRSS")
out, _ = attend(q, k, v, normalize="sigmoid", block_elements=2**18)
out.sum().backward()
print(mib("VmHWM") - before)
"""


def test_mmapped_large_allocations_keep_the_process_near_its_tensors():
    grown = {}
    for mode in ("heap", "mmap"):
        run = subprocess.run(
            [sys.executable, "-c", FRAGMENTING_STEP, mode], capture_output=True, text=True,
            env=SUBPROCESS_ENV, cwd=Path(__file__).resolve().parents[1], check=True,
        )  # fmt: skip
        grown[mode] = float(run.stdout.split()[-1])  # MiB the process grew by
    # The scores total 128 MiB; the heap kept about 2.7x that, mmapped blocks a fraction of it.
    assert grown["mmap"] < 0.5 * grown["heap"], grown


# A training step at N = 8,192 of dot + sigmoid (the chunked path, 64 blocks of 4 MiB), as training
# runs it: nothing set by hand. "heap" turns the chunked path's own setting off. (How much the heap
# keeps varies from process to process: 0.13 to 0.62 GB here.)
CHUNKED_STEP = """
import re, sys, torch
from attnexp.attention.design import attend
from attnexp.util import memory

def mib(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1]) / 1024

memory.AUTO_MMAP = sys.argv[1] == "auto"
q, k, v = (torch.randn(1, 1, 8192, 16, requires_grad=True) for _ in range(3))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = mib("VmRSS")
out, _ = attend(q, k, v, normalize="sigmoid", block_elements=2**20)
out.sum().backward()
print(memory.mmapped(), mib("VmHWM") - before)
"""


def test_the_chunked_path_keeps_the_process_near_its_tensors_by_itself():
    grown, mmapped = {}, {}
    for mode in ("heap", "auto"):
        run = subprocess.run(
            [sys.executable, "-c", CHUNKED_STEP, mode], capture_output=True, text=True,
            env=SUBPROCESS_ENV, cwd=Path(__file__).resolve().parents[1], check=True,
        )  # fmt: skip
        flag, mib = run.stdout.split()[-2:]
        grown[mode], mmapped[mode] = float(mib), flag == "True"
    assert mmapped == {"heap": False, "auto": True}
    # The scores total 256 MiB, a block 4 MiB: mapped, the process holds about the live tensors
    # (~100 MB here). What the heap keeps varies too much between processes to compare with.
    assert grown["auto"] < 160, grown


def test_design_scaling_saves_each_length_and_says_how_it_timed(monkeypatch):
    mmapped = []  # not in this process: it would slow every later test's large allocations
    monkeypatch.setattr(suite, "mmap_large_allocations", lambda size: mmapped.append(size) or True)
    settings = suite.smoke_settings()
    settings.design_lengths, settings.design_once_above = [16, 24], 16
    saved = []
    rows = suite.run_design_scaling(settings, torch.device("cpu"), on_length=saved.append)
    assert [len(s) for s in saved] == [len(SCORES) * len(NORMALIZATIONS) * k for k in (1, 2)]
    assert saved[-1] == rows
    assert {r["method"] for r in rows if r["n"] == 16} == {"median of 1 after 1 warm-up"}
    assert {r["method"] for r in rows if r["n"] == 24} == {
        "one step, timed while profiled, allocations >= 4 MiB mmapped"
    }
    assert mmapped == [suite.LARGE_ALLOCATION_BYTES]  # for the long length only
    assert all(r["ms"] > 0 and r["peak_mb"] > 0 for r in rows)


def test_median_times_interleaves_and_is_at_least_the_sleep():
    calls = {"a": 0, "b": 0}

    def sleeper(label, seconds):
        def step():
            calls[label] += 1
            time.sleep(seconds)

        return step

    medians = median_times(
        {"a": sleeper("a", 0.002), "b": sleeper("b", 0.0)}, 2, 5, torch.device("cpu")
    )
    assert calls == {"a": 7, "b": 7}
    assert medians["a"] >= 0.002 and medians["b"] >= 0
    with pytest.raises(ValueError, match="repeats"):
        median_times({"a": sleeper("a", 0)}, 0, 0, torch.device("cpu"))


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.linear(x)


def test_plain_loop_trains_and_counts_samples():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(96, 2, generator=generator)
    targets = (inputs[:, 0] > 0).long()  # linearly separable
    models = []

    def factory():
        models.append(Counting())
        return models[-1]

    result = plain_loop_throughput(
        factory,
        shuffled_batches(inputs, targets, 32),
        steps=30,
        warmup_steps=2,
        optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.5),
    )
    assert models[0].seen == 32 * 32  # warm-up + timed steps, whole batches only
    assert result["steps"] == 30 and result["batch_size"] == 32
    assert math.isfinite(result["samples_per_s"]) and result["samples_per_s"] > 0
    assert result["last_loss"] < 0.5 * result["first_loss"]


def test_plain_batches_refuse_bad_arguments():
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size"):
        shuffled_batches(x, y, batch_size=9)
    with pytest.raises(ValueError, match="differ in length"):
        shuffled_batches(x, y[:4], batch_size=2)
    with pytest.raises(ValueError, match="context_len must be in \\[1, 7\\]"):
        random_windows(torch.arange(8), context_len=8, batch_size=2)


def test_random_windows_are_the_stream_and_its_next_tokens():
    tokens = torch.arange(100) * 3  # token t is 3t: a window's position is readable
    x, y = next(random_windows(tokens, context_len=5, batch_size=4, seed=1))
    assert x.shape == y.shape == (4, 5)
    assert (y == x + 3).all()  # the next token at every position
    assert (x[:, 1:] - x[:, :-1] == 3).all() and (y[:, -1] <= 99 * 3).all()
    again = next(random_windows(tokens, context_len=5, batch_size=4, seed=1))[0]
    assert torch.equal(x, again)  # a pure function of the seed


def test_plain_loop_clips_gradients_and_trains_a_language_model():
    """A bigram model learns a deterministic stream (token t+1 = token t + 1 mod 5); with
    clipping at a tiny norm and a huge lr every step moves the weights by at most lr x norm."""
    tokens = torch.arange(500) % 5
    models = []

    def factory():
        models.append(nn.Embedding(5, 5))
        return models[-1]

    result = plain_loop_throughput(
        factory,
        random_windows(tokens, context_len=8, batch_size=4),
        steps=60,
        warmup_steps=0,
        loss_fn=next_token_loss,
        optimizer_factory=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    assert result["batch_size"] == 4 and result["last_loss"] < 0.2 * result["first_loss"]
    before = models[0].weight.detach().clone()
    plain_loop_throughput(
        lambda: models[0],
        random_windows(tokens, context_len=8, batch_size=4),
        steps=1,
        warmup_steps=0,
        loss_fn=next_token_loss,
        clip_grad_norm=1e-3,
        optimizer_factory=lambda p: torch.optim.SGD(p, lr=100.0),
    )
    assert (models[0].weight.detach() - before).norm() == pytest.approx(0.1, rel=1e-3)


def test_targets_are_read_at_n256_dim128():
    rows = [
        {
            "variant": "mha",
            "implementation": "torch.nn.MultiheadAttention",
            "grid": [256],
            "dim": 128,
            "ours_over_ref": 1.2,
            "target": 1.05,
        },
        {
            "variant": "se",
            "implementation": "timm SEModule",
            "grid": [16, 16],
            "dim": 128,
            "ours_over_ref": 0.9,
            "target": 1.1,
        },
        {
            "variant": "mha",
            "implementation": "torch.nn.MultiheadAttention",
            "grid": [64],
            "dim": 128,
            "ours_over_ref": 0.5,
            "target": 1.05,
        },
        {
            "variant": "muse",
            "implementation": "three-branch MUSE (SDPA)",
            "grid": [256],
            "dim": 128,
            "ours_over_ref": 3.0,
            "target": None,
        },
    ]
    found = {t["variant"]: t for t in evaluate_targets(rows)}
    assert set(found) == {"mha", "se"}
    assert found["mha"]["ours_over_ref"] == 1.2 and not found["mha"]["met"]
    assert found["se"]["met"]


def test_training_flops_match_the_hand_count():
    from functools import partial

    from attnexp.bench.model_step import training_flops_per_sample
    from attnexp.data.shape import DataShape
    from attnexp.models.transformer import Transformer

    n, c, hidden, heads, classes = 6, 8, 16, 2, 3
    model = Transformer(
        partial(MultiHeadAttention, num_heads=heads), DataShape("sequence", (n,), classes, in_channels=1),
        dim=c, depth=1, mlp_ratio=hidden / c,
    )  # fmt: skip
    # Dense layers, 2 FLOPs per weight per token they see: the 1x1 conv embedding and the MLP on
    # every token, the head once on the pooled vector. Norms and positions are not counted.
    embed, mlp, head = (
        (1 * c + c),
        (c * hidden + hidden) + (hidden * c + c),
        (c * classes + classes),
    )
    dense = 2 * (n * (embed + mlp) + head)
    # mha: qkv and output projections, scores q.k, softmax (4 per score per head), weighted values.
    attention = (
        2 * n * c * 3 * c + 2 * n * c * c + 2 * n * n * c + 4 * n * n * heads + 2 * n * n * c
    )
    assert training_flops_per_sample(model, n) == 3 * (dense + attention)


def test_scaling_skips_a_variant_once_a_step_exceeds_the_budget():
    from attnexp.bench.model_step import bench_mqar_scaling

    rows = bench_mqar_scaling(
        ["linear"], [16, 32], batch=1, warmup=0, repeats=1, budget_s=0.0, device=torch.device("cpu")
    )
    first, second = rows
    assert first["n"] == 16 and first["ms"] > 0 and first["skipped"] is None
    assert second["n"] == 32 and second["ms"] is None and "N=16" in second["skipped"]


def test_ablation_command_composes_with_the_joblib_launcher():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from attnexp.bench.ablation import ATTENTIONS, BACKBONES, ablation_command
    from attnexp.config.paths import CONFIG_DIR

    command = ablation_command(n_jobs=2)
    assert command[1:3] == ["train.py", "-m"]
    assert f"attention={','.join(ATTENTIONS)}" in command
    assert f"backbone={','.join(BACKBONES)}" in command
    # One cell of the sweep, composed as the multirun composes each job.
    cell = [o.split(",")[0] for o in command[3:]]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=cell, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2
    assert set(cfg.logger) == {"csv"}
    with pytest.raises(ValueError, match="n_jobs"):
        ablation_command(n_jobs=0)


def test_overhead_rounds_alternate_order_and_ratio_is_the_median(monkeypatch, data_dir):
    from attnexp.bench import overhead

    calls = []
    speeds = iter([100.0, 50.0, 90.0, 45.0, 80.0, 100.0])  # in call order

    def fake(side):
        def run(*args):
            calls.append(side)
            return {"samples_per_s": next(speeds)}

        return run

    monkeypatch.setattr(overhead, "framework_round", fake("framework"))
    monkeypatch.setattr(overhead, "plain_round", fake("plain"))
    result = overhead.measure_overhead([f"paths.data_dir={data_dir}"], length=1, rounds=3)
    assert calls == ["framework", "plain", "plain", "framework", "framework", "plain"]
    # Per round framework / plain: 100/50, 45/90, 80/100 -> median 0.8.
    assert result["framework_samples_per_s"] == [100.0, 45.0, 80.0]
    assert result["plain_samples_per_s"] == [50.0, 90.0, 100.0]
    assert result["ratio"] == pytest.approx(0.8) and result["met"] is False
    with pytest.raises(ValueError, match="rounds"):
        overhead.measure_overhead(rounds=0)


def test_lm_overhead_reports_tokens_per_s_as_windows_times_context(monkeypatch, tmp_path):
    from attnexp.bench import overhead
    from attnexp.bench.suite import section_report

    speeds = iter([10.0, 20.0, 30.0, 24.0])  # windows/s in call order: F P P F
    composed = []

    def framework(overrides, work_dir):
        composed.append(list(overrides))
        return {"samples_per_s": next(speeds)}

    monkeypatch.setattr(overhead, "framework_round", framework)
    monkeypatch.setattr(overhead, "plain_round", lambda cfg: {"samples_per_s": next(speeds)})
    text = overhead.synthetic_text(tmp_path / "t.txt", chars=3000)
    overrides = overhead.text_overrides(
        text, ["experiment=shakespeare_char_cpu", f"paths.data_dir={tmp_path}"]
    )
    assert overrides[-1] == "dataset.shape.vocab_size=28"  # a-z, space and newline
    result = overhead.measure_overhead(
        [*overrides, "dataset.context_len=32"], length=7, rounds=2, work_dir=tmp_path
    )
    assert result["task"] == "lm" and (result["length"], result["unit"]) == (7, "steps")
    assert "trainer.max_steps=7" in composed[0] and "dataset.steps_per_epoch=7" in composed[0]
    assert result["framework_samples_per_s"] == [10.0, 24.0]
    assert result["framework_tokens_per_s"] == [320.0, 768.0]  # x context 32
    assert result["plain_tokens_per_s"] == [640.0, 960.0]
    assert result["ratio"] == pytest.approx((10 / 20 + 24 / 30) / 2) and not result["met"]
    report = section_report("lm_overhead", result)
    assert "| 2 | 24 | 30 | 768 | 960 | 0.8 |" in report and "7 steps" in report


def test_the_lm_plain_loop_steps_as_the_framework_counts(tmp_path):
    """The plain side times the steps RunStats times: all but the first, whole windows."""
    from attnexp.bench.overhead import counted_samples, fit_steps, length_overrides
    from attnexp.config.compose import compose_train_config

    cfg = compose_train_config(
        ["experiment=shakespeare_char_cpu", *length_overrides("lm", 30)], tmp_path
    )
    assert fit_steps(cfg, 10**6) == 30 and counted_samples(cfg, 10**6) == 29 * 12
    cls = compose_train_config(length_overrides("classification", 2), tmp_path)
    assert fit_steps(cls, 100) == 2 * -(-100 // cls.dataset.batch_size)


def test_causal_rows_are_relative_to_mha_and_pool_is_refused():
    from attnexp.bench.model_step import bench_causal

    rows = bench_causal(
        ["pool", "mha", "none"], ["transformer"], context_len=8, warmup=0, repeats=1,
        device=torch.device("cpu"), overrides=["backbone.dim=16", "backbone.depth=1"],
    )  # fmt: skip
    found = {r["variant"]: r for r in rows}
    assert found["mha"]["over_baseline"] == 1.0 and found["mha"]["met"]
    assert found["none"]["over_baseline"] == pytest.approx(found["none"]["ms"] / found["mha"]["ms"])
    assert found["pool"]["ms"] is None and "causal" in found["pool"]["refused"]
    assert rows[0]["batch"] == 12 and rows[0]["context_len"] == 8  # the CPU experiment's batch
    with pytest.raises(ValueError, match="relative to mha"):
        bench_causal(["none"], ["cnn"], context_len=8, warmup=0, repeats=1,
                     device=torch.device("cpu"))  # fmt: skip


def test_the_ablation_takes_its_lists_from_the_experiment_config(tmp_path):
    from attnexp.bench.ablation import ATTENTIONS, BACKBONES, swept

    experiment = tmp_path / "e.yaml"
    experiment.write_text("hydra:\n  sweeper:\n    params:\n      attention: none,toy\n")
    assert swept("attention", experiment) == ("none", "toy")
    assert (ATTENTIONS, BACKBONES) == (swept("attention"), swept("backbone"))
    assert {"none", "mha"} <= set(ATTENTIONS)


def test_the_benchmark_builds_and_steps_a_model_without_importing_lightning():
    # Only the overhead section, which runs train.py, may import Lightning (lazily).
    script = (
        "import sys, torch\n"
        "import attnexp.bench.suite\n"
        "from attnexp.bench.model_step import build_step, mqar_config\n"
        "cfg = mqar_config('mha', 16, ['backbone.dim=16', 'backbone.depth=1'])\n"
        "model, step = build_step(cfg, 2, torch.device('cpu'))\n"
        "step()\n"
        "print('params', sum(p.numel() for p in model.parameters()) > 0)\n"
        "print('lightning imported:', 'lightning' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "params True" in proc.stdout
    assert "lightning imported: False" in proc.stdout


def test_memory_exponent_is_the_log_log_slope():
    linear = [{"n": n, "peak_mb": 3.0 * n} for n in (1024, 4096, 16384)]
    quadratic = [{"n": n, "peak_mb": 1e-6 * n * n} for n in (1024, 4096, 16384)]
    assert memory_exponent(linear) == pytest.approx(1.0)
    assert memory_exponent(quadratic) == pytest.approx(2.0)
    assert memory_exponent(linear[:1]) is None


def test_the_design_report_divides_by_dot_softmax_at_the_same_n():
    def row(cell, n, ms, mb):
        return {"variant": cell, "n": n, "batch": 1, "ms": ms, "peak_mb": mb}

    curve = [
        row("dot+softmax", 1024, 10.0, 1.0), row("dot+softmax", 4096, 40.0, 4.0),
        row("l2+softmax", 1024, 12.0, 1.0), row("l2+softmax", 4096, 60.0, 4.0),
        row("dot+max", 1024, 30.0, 2.0), row("dot+max", 4096, 90.0, 32.0),
        row("additive+softmax", 1024, 300.0, 2.0), row("additive+softmax", 4096, 900.0, 8.0),
    ]  # fmt: skip
    report = design_scaling_report(curve)
    assert "| additive+softmax | 1 | met | 22.5 | – | 4096 |" in report  # no fused path, no target
    assert "| l2+softmax | 4096 | 60 | 4 | 1.5 | 1 |" in report
    assert "| dot+max | 4096 | 90 | 32 | 2.25 | 8 |" in report
    assert "| l2+softmax | 1 | met | 1.5 | NOT met | 4096 |" in report  # 1.5 > 1.3
    assert "| dot+max | 2 | NOT met | 2.25 | – | 4096 |" in report  # quadratic; no time target


def test_scaling_plot_styles_keep_every_line_apart():
    from attnexp.bench.tables import line_styles

    cells = [f"{s}+{n}" for s in SCORES for n in NORMALIZATIONS]
    styles = line_styles(cells)
    assert len({(st["color"], st["linestyle"]) for st in styles.values()}) == len(cells)
    assert {styles[f"{s}+softmax"]["linestyle"] for s in SCORES} == {"-"}  # a style per norm
    assert len({styles[f"dot+{n}"]["color"] for n in NORMALIZATIONS}) == 1  # a colour per score
    names = [f"v{i}" for i in range(23)]
    assert len({tuple(st.values()) for st in line_styles(names).values()}) == 23


def test_the_peak_is_the_most_bytes_alive_at_once_and_leaves_out_what_was_there_before():
    before = [torch.empty(2**20, dtype=torch.uint8)]  # its free is not the step's to count

    def step():
        a = torch.empty(2**20, dtype=torch.uint8)
        b = torch.empty(2**21, dtype=torch.uint8)
        del a
        before.clear()
        c = torch.empty(2**19, dtype=torch.uint8)
        del b, c

    assert peak_memory_bytes(step, torch.device("cpu")) == 3 * 2**20
    assert peak_memory_bytes(lambda: None, torch.device("cpu")) == 0


def test_the_position_bias_benchmark_measures_the_kernel_against_float64():
    from attnexp.bench import position_bias

    rows = position_bias.measure(lengths=[200], progress=lambda _: None)
    errors = {(r["dtype"], r["offsets"].split()[0]): r["max_abs_error"] for r in rows}
    assert errors["float32", "relative"] < 1e-5 and errors["float32", "no"] < 1e-5
    assert errors["bfloat16", "relative"] < 0.1  # bf16's own level, not a wrong bias
    assert "| 200 | float32 | relative (the fused path) |" in position_bias.to_markdown(rows)
    (timed,) = position_bias.speed([128], repeats=1)
    assert timed["n"] == 128 and all(timed[form] > 0 for form in ("fused", "chunked", "no bias"))
    assert "| 128 |" in position_bias.speed_markdown([timed])
    (sink,) = position_bias.speed([128], repeats=1, knob="sink")
    assert "with a sink" in position_bias.speed_markdown([sink])
    with pytest.raises(ValueError, match="knob must be one of forget, sink; got 'softcap'"):
        position_bias.speed([128], knob="softcap")


def test_the_knob_scaling_benchmark_times_every_preset_and_reads_its_memory():
    from attnexp.bench import knob_scaling

    presets = knob_scaling.presets()
    assert presets["mha"] == {} and presets["gate"] == {"gate": "elementwise"} and len(presets) == 12
    rows = knob_scaling.measure(lengths=[32, 64], progress=lambda _: None)
    assert {(r["knob"], r["n"]) for r in rows} == {(k, n) for k in presets for n in (32, 64)}
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    table = knob_scaling.to_markdown(rows)
    assert table.count("\n| ") == 1 + len(presets)  # the header's separator and one line each
    chosen = knob_scaling.measure(lengths=[32], progress=lambda _: None, knobs=["sink", "mha"])
    assert [r["knob"] for r in chosen] == ["sink", "mha"]
    with pytest.raises(ValueError, match=r"unknown knob presets \['sinks'\]; the presets are mha, "):
        knob_scaling.measure(lengths=[32], knobs=["sinks"])


def test_the_decoding_benchmark_times_a_mixer_with_its_state_and_by_recomputation():
    from attnexp.bench import decoding

    (row,) = decoding.tokens_per_second([16], repeats=1, attention="gla", new_tokens=4)
    assert (row["attention"], row["context"], row["new"]) == ("gla", 16, 4)
    assert row["same"] and row["cached"] > 0 and row["recomputed"] > 0


def test_the_process_memory_benchmark_measures_any_variant_and_tabulates_its_growth():
    from attnexp.bench import process_memory

    cell = process_memory.child(64, True, "gla")
    assert cell["variant"] == "gla" and cell["n"] == 64 and cell["peak_rss_mb"] > 0 and cell["step_s"] > 0
    rows = [{"variant": "gla", "n": n, "growth_mb": mb, "step_s": s}
            for n, mb, s in ((1024, 10.0, 0.1), (4096, 40.0, 0.4))]  # fmt: skip
    table = process_memory.scaling_markdown(rows)
    assert "| gla | 10 | 40 | 0.100 | 0.400 | 4.00 | 4.00 |" in table
