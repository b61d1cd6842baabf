"""Image datasets from their standard files: each format written byte for byte here (a few tiny
records), read back to known pixels and labels, trained on for a step; truncated, wrong-format
and malicious files are refused before training with ``dataset.path`` named; downloads come from
a loopback server (conftest.py's ``server``) and are checked by md5."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from attnexp.config.validate import validate
from attnexp.data.augment import model_inputs
from attnexp.data.images import IDX_IMAGES, load_cifar, load_idx, load_image_folder, load_npz
from attnexp.models import build_model
from attnexp.runs.record import read_results
from attnexp.training.pipeline import build_data, build_module, train
from tests.conftest import compose_cfg

PER_FILE = 4  # records per CIFAR file: 5 train files -> 20 training images
TINY = [
    "attention=none", "backbone=cnn", "backbone.dim=8", "backbone.depth=1", "trainer=cpu",
    "logger=csv", "dataset.batch_size=4", "debug=limit", "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1", "figures=0",
]  # fmt: skip


def planar_images(n: int, seed: int) -> np.ndarray:
    """``(n, 3, 32, 32)`` uint8: CIFAR's planar layout (all R, then all G, then all B)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def cifar_record_bytes(planes: np.ndarray, labels: np.ndarray) -> bytes:
    """Records as the binary version stores them: label byte(s), then 3072 pixel bytes."""
    labels = labels.reshape(len(planes), -1).astype(np.uint8)
    return np.concatenate([labels, planes.reshape(len(planes), -1)], axis=1).tobytes()


def write_cifar10(root: Path, python: bool = False) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 in the binary (or python) version's layout; returns the planar images and
    labels written, train files concatenated."""
    folder = root / ("cifar-10-batches-py" if python else "cifar-10-batches-bin")
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for i, name in enumerate(names):
        planes = planar_images(PER_FILE, seed=i)
        labels = (np.arange(PER_FILE) + i) % 10
        if python:
            batch = {b"batch_label": b"tiny", b"labels": labels.tolist(),
                     b"data": planes.reshape(PER_FILE, -1), b"filenames": [b"x.png"] * PER_FILE}  # fmt: skip
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            (folder / f"{name}.bin").write_bytes(cifar_record_bytes(planes, labels))
        written[name] = (planes, labels)
    train_ = [written[n] for n in names[:5]]
    return {
        "train_planes": np.concatenate([p for p, _ in train_]),
        "train_labels": np.concatenate([y for _, y in train_]),
        "test_planes": written["test_batch"][0], "test_labels": written["test_batch"][1],
    }  # fmt: skip


def test_cifar10_binary_is_read_as_rgb_channels_last_with_its_labels(tmp_path):
    written = write_cifar10(tmp_path)
    x_train, y_train, x_test, y_test = load_cifar(str(tmp_path))
    assert x_train.dtype == np.uint8 and x_train.shape == (5 * PER_FILE, 32, 32, 3)
    assert y_train.dtype == np.int64 and y_train.tolist() == written["train_labels"].tolist()
    assert y_test.tolist() == written["test_labels"].tolist()
    # Known answer from the raw record: byte 1 is R of pixel (0, 0), 1 + 1024 its G, 1 + 2048
    # its B; byte 2 is R of pixel (0, 1) (row-major), byte 1 + 32 R of pixel (1, 0).
    record = (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()[: 1 + 3072]
    assert x_test[0, 0, 0].tolist() == [record[1], record[1 + 1024], record[1 + 2048]]
    assert x_test[0, 0, 1, 0] == record[2] and x_test[0, 1, 0, 0] == record[1 + 32]
    assert np.array_equal(x_train, written["train_planes"].transpose(0, 2, 3, 1))


def test_cifar100_binary_has_a_coarse_then_a_fine_label_byte(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    planes = planar_images(3, seed=0)
    coarse, fine = np.array([1, 2, 19]), np.array([5, 77, 99])
    for name in ("train.bin", "test.bin"):
        (folder / name).write_bytes(cifar_record_bytes(planes, np.stack([coarse, fine], 1)))
    _, y_fine, x_test, _ = load_cifar(str(tmp_path), variant="cifar100")
    _, y_coarse, _, _ = load_cifar(str(tmp_path), variant="cifar100", label="coarse")
    assert y_fine.tolist() == fine.tolist() and y_coarse.tolist() == coarse.tolist()
    assert np.array_equal(x_test, planes.transpose(0, 2, 3, 1))


def test_the_python_version_reads_as_the_binary_one_also_as_numpy_1_pickled_it(tmp_path):
    write_cifar10(tmp_path / "bin")
    binary = load_cifar(str(tmp_path / "bin"))
    write_cifar10(tmp_path / "py", python=True)
    # CIFAR's own pickles name numpy 1's module (numpy.core); this numpy writes numpy._core.
    for file in (tmp_path / "py" / "cifar-10-batches-py").iterdir():
        file.write_bytes(
            file.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        )
    assert b"numpy.core.multiarray" in file.read_bytes()
    python = load_cifar(str(tmp_path / "py"))
    for a, b in zip(binary, python, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path, python=True)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [Exploit(marker)]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError, match=r"dataset\.path: \S+data_batch_3 is not a readable CIFAR pickle .*refused to load (posix|os|nt)\.system"):  # fmt: skip
        load_cifar(str(tmp_path))
    assert not marker.exists()


def test_a_truncated_cifar_file_fails_before_training_and_records_no_success(tmp_path):
    write_cifar10(tmp_path / "data" / "cifar10")
    batch = tmp_path / "data" / "cifar10" / "cifar-10-batches-bin" / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    cfg = compose_cfg(
        ["dataset=cifar10", f"paths.data_dir={tmp_path / 'data'}", *TINY], tmp_path / "run"
    )
    with pytest.raises(ValueError, match=r"dataset\.path: \S+data_batch_2\.bin has 12192 bytes, not a whole number of 3073-byte records"):  # fmt: skip
        train(cfg)
    results = read_results(tmp_path / "run")
    assert results["status"] == "failed" and "data_batch_2.bin" in results["error"]
    assert not results.get("metrics") and not (tmp_path / "run" / "checkpoints").exists()


def test_missing_cifar_names_the_path_the_layout_and_the_download(tmp_path):
    cfg = compose_cfg(["dataset=cifar100", f"paths.data_dir={tmp_path}", *TINY])
    with pytest.raises(ValueError, match=r"dataset\.path=\S+cifar100 does not hold cifar-100-binary/\{train\.bin, test\.bin\} \(binary version\) or cifar-100-python/\{train, test\} \(python version\) \(or set dataset\.download=true"):  # fmt: skip
        validate(cfg)


@pytest.mark.parametrize("backbone", ["cnn", "transformer"])
def test_cifar10_trains_a_step_on_uint8_pixels_scaled_per_batch(tmp_path, backbone):
    write_cifar10(tmp_path / "data" / "cifar10")
    overrides = ["dataset=cifar10", f"paths.data_dir={tmp_path / 'data'}", *TINY]
    cfg = compose_cfg([*overrides, f"backbone={backbone}", "backbone.patch_size=8"
                       if backbone == "transformer" else "backbone.kernel_size=3"], tmp_path / "run")  # fmt: skip
    data = build_data(cfg)
    x, y = data.load()["train"]
    assert x.dtype == torch.uint8 and x.shape[1:] == (32, 32, 3)  # a quarter of float32
    stored, labels = next(iter(data.train_dataloader()))
    batch = build_module(cfg, build_model(cfg)).prepare(stored)  # as the module feeds its model
    assert batch.dtype == torch.float32 and labels.dtype == torch.long
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert torch.equal(model_inputs(x[:2]), x[:2].float() / 255)
    assert torch.equal(data.example_batch(2), data.load()["test"][0][:2].float() / 255)
    results = train(cfg)
    assert results["status"] == "completed" and np.isfinite(results["metrics"]["train/loss"])


# --------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write_idx(root: Path, gz: bool, n_train: int = 24, n_test: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8)[::-1] % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        raw = idx_bytes(a, IDX_IMAGES if a.ndim == 3 else 0x00000801)
        (root / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_idx_files_are_read_as_written(tmp_path, gz):
    arrays = write_idx(tmp_path, gz)
    x_train, y_train, x_test, y_test = load_idx(str(tmp_path))
    assert x_train.shape == (24, 28, 28, 1) and x_train.dtype == np.uint8
    assert np.array_equal(x_train[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
    assert (
        y_train.dtype == np.int64 and y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    )


BROKEN_IDX = {
    "wrong magic": (lambda raw: b"\x00\x00\x08\x01" + raw[4:], r"its magic number is 0x00000801, expected 0x00000803"),
    "truncated": (lambda raw: raw[:-5], r"has 18811 bytes of data, its header declares 24 x 28 x 28 = 18816: truncated"),
    "truncated gzip": (lambda raw: gzip.compress(raw)[:-20], r"cannot be read \(EOFError"),
    "not idx at all": (lambda raw: b"<html>", r"magic number is 0x3c68746d"),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN_IDX)
def test_a_broken_idx_file_is_refused_naming_it(tmp_path, case):
    write_idx(tmp_path, gz=False)
    file = tmp_path / "train-images-idx3-ubyte"
    corrupt, message = BROKEN_IDX[case]
    file.write_bytes(corrupt(file.read_bytes()))
    with pytest.raises(ValueError, match=rf"dataset\.path: \S+train-images-idx3-ubyte .*{message}"):
        load_idx(str(tmp_path))


def test_mnist_trains_a_step_and_missing_files_are_listed(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.path=\S+mnist does not hold the IDX files .*\(missing: train-images-idx3-ubyte, .*dataset\.download=true"):  # fmt: skip
        validate(compose_cfg(["dataset=mnist", f"paths.data_dir={tmp_path}", *TINY]))
    write_idx(tmp_path / "fashion_mnist", gz=True)
    cfg = compose_cfg(
        ["dataset=fashion_mnist", f"paths.data_dir={tmp_path}", *TINY], tmp_path / "run"
    )
    assert train(cfg)["status"] == "completed"


# --------------------------------------------------------------------------- image folder and npz

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "owl": (0, 128, 0)}


def write_folder(root: Path, per_class: int = 5, size: tuple[int, int] = (6, 4)) -> None:
    from PIL import Image

    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")


def test_an_image_folder_reads_classes_in_name_order_resized_and_converted(tmp_path):
    write_folder(tmp_path / "imgs")
    x_train, y_train, x_test, y_test = load_image_folder(
        str(tmp_path / "imgs"), [8, 8], 3, 3, str(tmp_path / "cache"), test_fraction=0.4
    )
    assert x_train.shape == (9, 8, 8, 3) and x_test.shape == (6, 8, 8, 3)
    assert sorted(y_test.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified
    for x, y in ((x_train, y_train), (x_test, y_test)):
        for image, label in zip(x, y, strict=True):  # a uniform image stays its colour
            assert (image == list(COLOURS.values())[label]).all()
    grey, _, _, _ = load_image_folder(str(tmp_path / "imgs"), [4, 6], 1, 3, str(tmp_path / "cache"))
    assert grey.shape[1:] == (4, 6, 1)
    assert set(np.unique(grey).tolist()) <= {29, 76, 75}  # ITU-R 601 luma of the three colours


def test_an_image_folder_with_splits_trains_and_a_wrong_class_count_is_named(tmp_path):
    write_folder(tmp_path / "imgs" / "train")
    write_folder(tmp_path / "imgs" / "test", per_class=2)
    base = ["dataset=image_folder", f"dataset.path={tmp_path / 'imgs'}", "dataset.shape.grid=[8,8]",
            f"paths.data_dir={tmp_path / 'cache'}", *TINY, "dataset.batch_size=2"]  # fmt: skip
    with pytest.raises(ValueError, match=r"dataset\.shape\.num_classes=10, but dataset\.path=\S+ has 3 class folders \(cat, dog, owl\): set dataset\.shape\.num_classes=3"):  # fmt: skip
        validate(compose_cfg([*base, "dataset.shape.num_classes=10"]))
    cfg = compose_cfg([*base, "dataset.shape.num_classes=3"], tmp_path / "run")
    assert build_data(cfg).load()["test"][1].tolist() == [0, 0, 1, 1, 2, 2]
    assert train(cfg)["status"] == "completed"
    (tmp_path / "imgs" / "train" / "dog" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"dataset\.path: \S+0\.png is not a readable image"):
        validate(cfg)


def test_an_npz_is_read_without_pickle_and_gets_a_channel_axis(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "y_train": np.arange(20, dtype=np.uint8) % 10,
              "x_test": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
              "y_test": np.arange(6, dtype=np.uint8)}  # fmt: skip
    np.savez(tmp_path / "mnist.npz", **arrays)
    x_train, y_train, _, _ = load_npz(str(tmp_path / "mnist.npz"))
    assert np.array_equal(x_train[..., 0], arrays["x_train"]) and y_train.dtype == np.int64
    cfg = compose_cfg(
        ["dataset=npz", f"dataset.path={tmp_path / 'mnist.npz'}", *TINY], tmp_path / "run"
    )
    assert train(cfg)["status"] == "completed"
    np.savez(tmp_path / "bad.npz", **{**arrays, "y_test": np.array([object()] * 6)})
    with pytest.raises(ValueError, match=r"dataset\.path: \S+bad\.npz is not a readable \.npz of plain arrays"):  # fmt: skip
        load_npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "keys.npz", x=arrays["x_train"])
    with pytest.raises(
        ValueError, match=r"holds arrays x; expected x_train, y_train, x_test, y_test"
    ):
        load_npz(str(tmp_path / "keys.npz"))


# --------------------------------------------------------------------------- downloads


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cifar_archive(tmp_path: Path) -> bytes:
    write_cifar10(tmp_path / "src")
    folder = tmp_path / "src" / "cifar-10-batches-bin"
    return tar_gz({f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in folder.iterdir()})


def download_overrides(tmp_path: Path, url: str, md5: str) -> list[str]:
    return ["dataset=cifar10", f"paths.data_dir={tmp_path / 'data'}", "dataset.download=true",
            f"dataset.source.url={url}", f"dataset.source.md5={md5}", *TINY]  # fmt: skip


def test_cifar_is_downloaded_once_checked_by_md5_and_unpacked(tmp_path, server):
    base, files, requests = server
    files["cifar-10-binary.tar.gz"] = archive = cifar_archive(tmp_path)
    cfg = compose_cfg(download_overrides(tmp_path, f"{base}/cifar-10-binary.tar.gz",
                                         hashlib.md5(archive).hexdigest()))  # fmt: skip
    validate(cfg)
    validate(cfg)
    assert requests == ["cifar-10-binary.tar.gz"]  # once
    root = tmp_path / "data" / "cifar10"
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-bin"]  # the archive not kept
    assert np.array_equal(load_cifar(str(root))[0], load_cifar(str(tmp_path / "src"))[0])


def test_a_download_with_a_wrong_md5_is_refused_and_leaves_nothing(tmp_path, server):
    base, files, _ = server
    files["c.tar.gz"] = archive = cifar_archive(tmp_path)
    wrong = hashlib.md5(b"the real archive").hexdigest()
    with pytest.raises(ValueError, match=rf"has md5 {hashlib.md5(archive).hexdigest()}, expected {wrong}: refused and deleted"):  # fmt: skip
        validate(compose_cfg(download_overrides(tmp_path, f"{base}/c.tar.gz", wrong)))
    assert list((tmp_path / "data" / "cifar10").iterdir()) == []


def test_an_archive_member_escaping_the_folder_is_refused(tmp_path, server):
    base, files, _ = server
    files["c.tar.gz"] = evil = tar_gz({"../escaped.txt": b"x", "cifar-10-batches-bin/a.bin": b""})
    with pytest.raises(ValueError, match=r"dataset\.path: the archive \S+ cannot be unpacked \(OutsideDestinationError"):  # fmt: skip
        validate(
            compose_cfg(
                download_overrides(tmp_path, f"{base}/c.tar.gz", hashlib.md5(evil).hexdigest())
            )
        )
    assert not list(tmp_path.rglob("escaped.txt"))
    assert list((tmp_path / "data" / "cifar10").iterdir()) == []


def test_mnist_downloads_the_missing_gzipped_files_checked_by_md5(tmp_path, server):
    base, files, requests = server
    write_idx(tmp_path / "src", gz=True)
    for p in (tmp_path / "src").iterdir():
        files[p.name] = p.read_bytes()
    md5 = ",".join(f"{n}:{hashlib.md5(b).hexdigest()}" for n, b in files.items())
    cfg = compose_cfg(["dataset=mnist", f"paths.data_dir={tmp_path / 'data'}", "dataset.download=true",
                       f"dataset.source.url={base}", f"dataset.source.md5={{{md5}}}", *TINY])  # fmt: skip
    validate(cfg)
    assert sorted(requests) == sorted(files)
    assert np.array_equal(
        load_idx(str(tmp_path / "data" / "mnist"))[2], load_idx(str(tmp_path / "src"))[2]
    )


def test_an_archive_without_the_expected_folder_is_named(tmp_path, server):
    base, files, _ = server
    files["c.tar.gz"] = other = tar_gz({"something-else/readme.txt": b"hello"})
    with pytest.raises(ValueError, match=r"dataset\.path=\S+cifar10: the archive from \S+c\.tar\.gz did not unpack to cifar-10-batches-bin/"):  # fmt: skip
        validate(
            compose_cfg(
                download_overrides(tmp_path, f"{base}/c.tar.gz", hashlib.md5(other).hexdigest())
            )
        )
