"""The CIFAR backbones (resnet, vit) and the on-device batch augmentation (conf/augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnexp.attention import Kind, factory
from attnexp.bench.augment import CIFAR as CIFAR_BENCH
from attnexp.bench.augment import bare_loop, bench_pipeline, per_image
from attnexp.bench.suite import section_report
from attnexp.config.attention import attention_config, available
from attnexp.config.paths import CONFIG_DIR
from attnexp.config.validate import validate
from attnexp.data.augment import BatchAugment, CropFlip
from attnexp.data.datamodule import ArrayDataModule
from attnexp.data.shape import DataShape
from attnexp.models import build_model
from attnexp.models.common import kind_of
from attnexp.models.resnet import ResNet, ShortcutA
from attnexp.models.transformer import Block
from attnexp.models.vit import ViT
from attnexp.tasks.classifier import Classifier
from attnexp.tasks.optim import step_decay
from tests.conftest import IMAGE_BACKBONES, compose_cfg

IMAGE = DataShape("image", [16, 16], num_classes=10, in_channels=3)
CIFAR = DataShape("image", [32, 32], num_classes=10, in_channels=3)
YAMLS = sorted(p.stem for p in (CONFIG_DIR / "attention").glob("*.yaml"))  # the directory itself


def attention(name: str):
    return factory(attention_config(name))


def resnet_params(depth: int, dim: int = 16, in_channels: int = 3, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet with option-A shortcuts counted by hand: 3x3 convs without bias,
    a BatchNorm (2 per channel) after each, the linear classifier; shortcuts have none."""
    n = (depth - 2) // 6
    total = 9 * in_channels * dim + 2 * dim  # stem
    width = dim
    for stage in range(3):
        out = dim * 2**stage
        for _ in range(n):
            total += 9 * width * out + 2 * out + 9 * out * out + 2 * out
            width = out
    return total + width * classes + classes


def test_resnet20_has_the_papers_parameter_count():
    assert resnet_params(20) == 269_722  # "0.27M" (He et al. 2016, table 6)
    for depth in (20, 32, 56):
        model = ResNet(attention("none"), CIFAR, depth=depth)
        assert model.trainable_params() == resnet_params(depth)
    assert [round(resnet_params(d) / 1e6, 2) for d in (32, 56)] == [0.46, 0.85]  # the paper's


def test_resnet_stages_halve_the_grid_and_double_the_width():
    model = ResNet(attention("mha"), CIFAR, dim=4, depth=14).eval()
    assert model.stage_grids == [(32, 32), (16, 16), (8, 8)]
    strides = [b.body[0].stride for b in model.blocks]
    assert strides == [(1, 1)] * 2 + [(2, 2), (1, 1)] * 2
    x = torch.randn(2, 32, 32, 3)
    assert model.features(x).shape == (2, 8, 8, 16)
    # Each slot is built for its stage's grid and width, and sees exactly that (capture checks).
    slots = dict(model.slots())
    assert [(s.grid, s.module.dim) for s in slots.values()] == [
        ((32, 32), 4), ((32, 32), 4), ((16, 16), 8), ((16, 16), 8), ((8, 8), 16), ((8, 8), 16)
    ]  # fmt: skip
    logits, weights = model.attention_weights(x)
    assert torch.allclose(logits, model(x), atol=1e-5) and len(weights) == 6


def test_option_a_shortcut_subsamples_and_pads_channels_with_zeros():
    x = torch.randn(2, 4, 6, 6)
    y = ShortcutA(4, 8, 2)(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()
    assert ShortcutA(4, 4, 1)(x) is x


@pytest.mark.parametrize("name", YAMLS)
@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
def test_every_attention_yaml_trains_in_both_image_backbones(name, backbone):
    torch.manual_seed(0)
    factory_ = attention(name)
    if backbone == "resnet":
        model, blocks = ResNet(factory_, IMAGE, dim=8, depth=8), 3
    else:
        model, blocks = ViT(factory_, IMAGE, dim=16, depth=2, patch_size=4), 2
    x = torch.randn(2, 16, 16, 3)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    slots = dict(model.slots())
    kind = kind_of(factory_)
    assert (
        len(slots) == {Kind.IDENTITY: 0, Kind.POOL: 1, Kind.MIXER: blocks, Kind.GATE: blocks}[kind]
    )
    for slot in slots.values():  # every attention parameter learns
        grads = [p.grad for p in slot.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.attention_flops() == sum(s.module.flops(s.grid) for s in slots.values())
    assert (model.attention_flops() > 0) == (kind is not Kind.IDENTITY)


def test_attention_stages_place_slots_only_where_asked():
    model = ResNet(attention("se"), IMAGE, dim=8, depth=14, attention_stages=[2])
    assert [b.slot is not None for b in model.blocks] == [False] * 4 + [True] * 2
    assert {s.grid for _, s in model.slots()} == {(4, 4)}
    first_last = ResNet(attention("se"), IMAGE, dim=8, depth=8, attention_stages=[2, 0])
    assert [b.slot is not None for b in first_last.blocks] == [True, False, True]
    for bad in ([], [3], [-1], [0, 0], "2", [True], None):
        with pytest.raises(ValueError, match="backbone.attention_stages must be a non-empty list"):
            ResNet(attention("se"), IMAGE, attention_stages=bad)


def test_resnet_refusals_name_the_key():
    with pytest.raises(ValueError, match=r"backbone.depth must be 6n \+ 2"):
        ResNet(attention("none"), IMAGE, depth=21)
    sequence = DataShape("sequence", [40], num_classes=10, in_channels=1)
    for cls in (ResNet, ViT):
        with pytest.raises(
            ValueError, match="classifies images: it needs dataset.shape.input_type"
        ):
            cls(attention("none"), sequence)
    model = ResNet(attention("none"), IMAGE, dim=4, depth=8)
    with pytest.raises(ValueError, match="mask must be None"):
        model(torch.randn(1, 16, 16, 3), mask=torch.ones(1, 16, 16, dtype=torch.bool))


def test_vit_patch_grid_and_readouts():
    x = torch.randn(2, 16, 16, 3)
    mean = ViT(attention("muse"), IMAGE, dim=16, depth=1, patch_size=4)
    assert mean.features(x).shape == (2, 4, 4, 16)  # the 2-D patch grid kept
    assert isinstance(mean.blocks[0], Block) and next(iter(mean.slots()))[1].grid == (4, 4)
    cls = ViT(attention("mha"), IMAGE, dim=16, depth=1, patch_size=8, readout="cls")
    features = cls.features(x)
    assert features.shape == (2, 1 + 4, 16) and next(iter(cls.slots()))[1].grid == (5,)
    # The class-token readout reads position 0 alone: the patch tokens change nothing after.
    changed = features.clone()
    changed[:, 1:] += 1.0
    assert torch.equal(cls.readout(changed), cls.readout(features))
    with pytest.raises(ValueError, match="backbone.patch_size=5 must divide"):
        ViT(attention("mha"), IMAGE, patch_size=5)
    with pytest.raises(ValueError, match="backbone.readout must be one of mean, cls"):
        ViT(attention("mha"), IMAGE, readout="max")
    with pytest.raises(ValueError, match="backbone.readout=cls .* use backbone.readout=mean"):
        ViT(attention("pool"), IMAGE, readout="cls")


def test_image_backbones_compose_and_validate_by_name():
    for backbone in IMAGE_BACKBONES:
        cfg = compose_cfg([f"backbone={backbone}", "dataset=digits", "backbone.dim=8"])
        validate(cfg)
        assert build_model(cfg)(torch.randn(2, 8, 8, 1)).shape == (2, 10)
    with pytest.raises(ValueError, match="backbone.attention_stages"):
        validate(
            compose_cfg(["backbone=resnet", "dataset=digits", "backbone.attention_stages=[3]"])
        )
    with pytest.raises(ValueError, match="backbone=vit classifies images"):
        validate(compose_cfg(["backbone=vit"]))  # the default dataset: MNIST-1D sequences


# --- augmentation ---------------------------------------------------------------------------

CIFAR_AUGMENT = BatchAugment(crop_padding=4, flip=True, mean=[0.5] * 3, std=[0.25] * 3)


def uint8_images(n: int = 6, size: int = 8, channels: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.integers(1, 256, (n, size, size, channels), dtype=np.uint8))


def reference_crop_flip(x: np.ndarray, draws: CropFlip, p: int) -> np.ndarray:
    """Per image, by hand: zero-pad, slice at the drawn offsets, mirror left-right if drawn."""
    out = []
    for b, image in enumerate(x):
        padded = np.pad(image, ((p, p), (p, p), (0, 0)))
        top, left = int(draws.top[b]), int(draws.left[b])
        crop = padded[top : top + image.shape[0], left : left + image.shape[1]]
        out.append(crop[:, ::-1] if draws.flip[b] else crop)
    return np.stack(out)


def test_crop_and_flip_equal_padding_and_slicing_each_image_by_hand():
    x = uint8_images()
    draws = CIFAR_AUGMENT.draw(len(x), x.device, torch.Generator().manual_seed(3))
    draws = CropFlip(  # make sure both extremes and both flips are covered
        torch.tensor([0, 8, 3, 8, 0, 5]), torch.tensor([8, 0, 3, 8, 0, 1]), draws.flip
    )
    draws = CropFlip(draws.top, draws.left, torch.tensor([True, False, True, False, True, False]))
    out = CIFAR_AUGMENT.crop_flip(x, draws)
    assert out.dtype == torch.uint8
    assert np.array_equal(out.numpy(), reference_crop_flip(x.numpy(), draws, 4))
    # The crop at (8, 8) of an 8x8 image padded by 4: its bottom-right quarter, then zeros.
    assert torch.equal(out[3, :4, :4], x[3, 4:, 4:])
    assert out[3].sum() == x[3, 4:, 4:].sum()  # every other pixel is padding (zero)


def test_training_augmentation_is_the_seeded_draws_applied():
    x = uint8_images(n=32)
    out = CIFAR_AUGMENT(x, train=True, generator=torch.Generator().manual_seed(7))
    draws = CIFAR_AUGMENT.draw(len(x), x.device, torch.Generator().manual_seed(7))
    expected = CIFAR_AUGMENT.normalize(torch.as_tensor(reference_crop_flip(x.numpy(), draws, 4)))
    assert torch.equal(out, expected)
    other = CIFAR_AUGMENT(x, train=True, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(out, other)
    many = CIFAR_AUGMENT.draw(4000, x.device, torch.Generator().manual_seed(0))
    assert set(many.top.tolist()) == set(many.left.tolist()) == set(range(9))
    assert 0.45 < many.flip.float().mean() < 0.55
    no_flip = BatchAugment(crop_padding=2).draw(100, x.device, None)
    assert not no_flip.flip.any()


def test_evaluation_only_normalises_and_is_deterministic():
    x = uint8_images()
    a, b = CIFAR_AUGMENT(x, train=False), CIFAR_AUGMENT(x, train=False)
    assert torch.equal(a, b) and torch.equal(a, (x.float() / 255 - 0.5) / 0.25)


def test_normalisation_known_answers():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(1, 1, 1, 3)
    out = BatchAugment(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 0.25])(x, train=True)
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-2.0, 1.0, -1.2]))
    assert torch.equal(BatchAugment()(x, train=True).flatten(), torch.tensor([0.0, 1.0, 0.2]))
    floats = torch.rand(2, 4, 4, 3)
    assert BatchAugment()(floats, train=True) is floats  # no augmentation: the same tensor


def test_augment_refusals_name_the_key():
    with pytest.raises(ValueError, match="augment.crop_padding must be an integer >= 0"):
        BatchAugment(crop_padding=-1)
    with pytest.raises(ValueError, match="augment.mean and augment.std go together"):
        BatchAugment(mean=[0.5])
    with pytest.raises(ValueError, match="augment.std must be positive"):
        BatchAugment(mean=[0.5], std=[0.0])
    sequence = DataShape("sequence", [40], num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="input_type is sequence: use augment=none"):
        BatchAugment(flip=True).check(sequence)
    BatchAugment().check(sequence)  # augment=none fits every dataset
    with pytest.raises(ValueError, match="dataset.shape.in_channels=1, got 3"):
        CIFAR_AUGMENT.check(DataShape("image", [8, 8], num_classes=10, in_channels=1))
    with pytest.raises(ValueError, match="use augment=none"):
        validate(compose_cfg(["augment=cifar"]))  # MNIST-1D sequences
    with pytest.raises(ValueError, match="in_channels=1, got 3"):
        validate(compose_cfg(["augment=cifar", "dataset=digits"]))


class _Trainer:
    training = True


def test_the_training_module_augments_on_the_device_after_transfer():
    """The data module keeps uint8 pixels; the module's hook crops and flips in training only."""
    x, y = uint8_images(n=10), torch.arange(10)
    data = ArrayDataModule(lambda: (x.numpy(), y.numpy(), x.numpy(), y.numpy()), IMAGE_8, 4)
    assert data.load()["test"][0].dtype == torch.uint8
    module = Classifier(ResNet(attention("none"), IMAGE_8, dim=4, depth=8), 10, torch.optim.SGD,
                        augment=CIFAR_AUGMENT)  # fmt: skip
    module.trainer = _Trainer()
    torch.manual_seed(0)
    trained, labels = module.on_after_batch_transfer((x, y), 0)
    torch.manual_seed(0)
    assert torch.equal(trained, CIFAR_AUGMENT(x, train=True)) and labels is y
    _Trainer.training = False
    evaluated, _ = module.on_after_batch_transfer((x, y), 0)
    assert torch.equal(evaluated, CIFAR_AUGMENT.normalize(x)) and torch.equal(
        module.prepare(x), evaluated
    )


IMAGE_8 = DataShape("image", [8, 8], num_classes=10, in_channels=3)


def test_every_attention_variant_is_a_yaml():
    assert YAMLS == available()


# --- the CIFAR recipe ------------------------------------------------------------------------


def test_step_decay_divides_the_rate_by_ten_at_half_and_three_quarters():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = step_decay(optimizer, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == rates[49] == pytest.approx(0.1)
    assert rates[50] == rates[74] == pytest.approx(0.01)
    assert rates[75] == rates[99] == pytest.approx(0.001)
    for bad in ([0.75, 0.5], [0.5, 1.0], [0.0]):
        with pytest.raises(ValueError, match="optim.scheduler.milestones must be increasing"):
            step_decay(optimizer, 100, milestones=bad)
    with pytest.raises(ValueError, match="optim.scheduler.gamma must be in"):
        step_decay(optimizer, 100, gamma=0.0)


def test_cifar10_experiments_are_the_papers_recipe(data_dir):
    """Composes once conf/dataset/cifar10.yaml exists (the CIFAR data loaders' part)."""
    cfg = compose_cfg(["experiment=cifar10_resnet20", f"paths.data_dir={data_dir}"])
    assert (cfg.choices.backbone, cfg.backbone.depth, cfg.backbone.dim) == ("resnet", 20, 16)
    assert (cfg.optim.optimizer.lr, cfg.optim.optimizer.momentum) == (0.1, 0.9)
    assert not cfg.optim.optimizer.nesterov and cfg.optim.optimizer.weight_decay == 1e-4
    assert list(cfg.optim.scheduler.milestones) == [0.5, 0.75]
    assert (cfg.dataset.batch_size, cfg.trainer.max_epochs, cfg.trainer.accelerator) == (
        128,
        182,
        "gpu",
    )
    assert (cfg.augment.crop_padding, cfg.augment.flip) == (4, True)
    assert build_model(cfg).trainable_params() == resnet_params(20)


def test_the_benchmarks_bare_loops_do_the_augmentations_work():
    """Each image of the bare and per-image loops is one of the crops/flips ``augment`` draws."""
    x = uint8_images(n=4, size=32)
    mean, std = torch.tensor(CIFAR_BENCH.mean), torch.tensor(CIFAR_BENCH.std)
    idx = torch.tensor([3, 1, 2, 0])
    candidates = {
        (t, left, f): CIFAR_BENCH.normalize(
            CIFAR_BENCH.crop_flip(
                x[idx], CropFlip(torch.full((4,), t), torch.full((4,), left), torch.full((4,), f))
            )
        )
        for t in range(9)
        for left in range(9)
        for f in (False, True)
    }
    torch.manual_seed(0)
    for loop in (bare_loop, per_image):
        out = loop(x, idx, mean, std)
        for b in range(4):
            assert any(torch.allclose(out[b], c[b]) for c in candidates.values())
    report = section_report("pipeline", bench_pipeline(torch.device("cpu"), 8, 64, 0, 1))
    assert all(row in report for row in ("index", "bare", "augment", "per-image", "resnet20"))
