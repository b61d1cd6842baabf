"""Image datasets from their standard files, read without running code from them.

Every reader returns ``(x_train, y_train, x_test, y_test)``: ``x`` uint8 ``(N, H, W, C)`` (kept
uint8 in memory; ``attnexp.data.augment.model_inputs`` scales a batch to [0, 1]), ``y`` int64.

- CIFAR-10/100, binary version: records of label byte(s) + 3072 pixel bytes (1024 R, 1024 G,
  1024 B, each 32x32 row-major); the python version through ``SafeUnpickler``, which admits
  plain containers and numpy arrays and nothing else.
- MNIST / Fashion-MNIST IDX files, gzipped or raw: a big-endian magic (``0x00000803`` images,
  ``0x00000801`` labels), the dimensions, then uint8 data.
- An image folder: one sub-folder per class (``<path>/<class>/*``, or ``<path>/train/<class>/*``
  and ``<path>/test/<class>/*``), decoded by Pillow and resized to ``dataset.shape.grid``.
- An ``.npz`` of ``x_train, y_train, x_test, y_test`` (``allow_pickle`` off).

A missing or malformed file is a ``ValueError`` naming ``dataset.path`` and the expected layout;
``download=True`` fetches a missing dataset once from its canonical source (checked by md5).
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnexp.data.cache import cached_arrays
from attnexp.data.download import extract_tar, fetch
from attnexp.data.splits import Splits

KEY = "dataset.path"
CIFAR_SIDE, CIFAR_PIXELS = 32, 3 * 32 * 32


def _missing(path: Path, layout: str, downloadable: bool) -> ValueError:
    hint = (
        " (or set dataset.download=true to fetch it from its canonical source)"
        if downloadable
        else ""
    )
    return ValueError(f"{KEY}={path} does not hold {layout}{hint}")


def as_labels(y: np.ndarray, what: str) -> np.ndarray:
    """``y`` as int64 labels; a float or multi-dimensional array is refused, naming ``what``."""
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


# --------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR version's files: the folder its archive unpacks to, the train and test files."""

    folder: str
    train: tuple[str, ...]
    test: str
    label_bytes: int = 1  # binary version: CIFAR-100 has a coarse then a fine label byte

    def describe(self) -> str:
        return f"{self.folder}/{{{', '.join((*self.train, self.test))}}}"


CIFAR_BINARY = {
    "cifar10": CifarLayout(
        "cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"
    ),
    "cifar100": CifarLayout("cifar-100-binary", ("train.bin",), "test.bin", label_bytes=2),
}
CIFAR_PYTHON = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"
    ),
    "cifar100": CifarLayout("cifar-100-python", ("train",), "test"),
}
CIFAR_LABELS = ("fine", "coarse")  # CIFAR-100's 100 classes or its 20 superclasses


def load_cifar(
    path: str, variant: str = "cifar10", label: str = "fine", download: bool = False,
    url: str | None = None, md5: str | None = None,
) -> Splits:  # fmt: skip
    """CIFAR-10 or -100 from ``path``: the folder holding the unpacked ``cifar-10-batches-bin``
    (or ``cifar-100-binary``; the python version's ``cifar-10-batches-py`` / ``cifar-100-python``
    also reads). ``label``: CIFAR-100's ``fine`` (100) or ``coarse`` (20) classes."""
    if variant not in CIFAR_BINARY:
        raise ValueError(
            f"dataset.source.variant must be one of {', '.join(CIFAR_BINARY)}, got {variant!r}"
        )
    if label not in CIFAR_LABELS:
        raise ValueError(
            f"dataset.source.label must be one of {', '.join(CIFAR_LABELS)}, got {label!r}"
        )
    root = Path(path)
    binary, python = CIFAR_BINARY[variant], CIFAR_PYTHON[variant]
    if not (root / binary.folder).is_dir() and not (root / python.folder).is_dir():
        if not (download and url):
            layout = f"{binary.describe()} (binary version) or {python.describe()} (python version)"
            raise _missing(root, layout, downloadable=bool(url))
        _fetch_archive(url, md5, root)
    if (root / binary.folder).is_dir():
        read, layout = _read_cifar_binary, binary
    elif (root / python.folder).is_dir():
        read, layout = _read_cifar_python, python
    else:  # only after a download
        raise ValueError(f"{KEY}={root}: the archive from {url} did not unpack to {binary.folder}/")
    coarse = label == "coarse"
    train = [read(_member(root, layout, f), layout, coarse) for f in layout.train]
    x_test, y_test = read(_member(root, layout, layout.test), layout, coarse)
    return (
        np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
        x_test, y_test,
    )  # fmt: skip


def _member(root: Path, layout: CifarLayout, name: str) -> Path:
    file = root / layout.folder / name
    if not file.is_file():
        raise ValueError(f"{KEY}={root}: {file} is missing (expected {layout.describe()})")
    return file


def _fetch_archive(url: str, md5: str | None, root: Path) -> None:
    """Download the ``.tar.gz`` at ``url`` (checked by ``md5``) and unpack it into ``root``; the
    archive itself is not kept."""
    with tempfile.TemporaryDirectory(prefix=".download.", dir=_made(root)) as tmp:
        archive = fetch(url, Path(tmp) / url.rsplit("/", 1)[-1], None, KEY, md5=md5)
        extract_tar(archive, root, KEY)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _pixels(flat: np.ndarray) -> np.ndarray:
    """CIFAR's planar rows (1024 R, 1024 G, 1024 B) as ``(N, 32, 32, 3)`` (channels last)."""
    return np.ascontiguousarray(flat.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))


def _read_cifar_binary(
    file: Path, layout: CifarLayout, coarse: bool
) -> tuple[np.ndarray, np.ndarray]:
    record = layout.label_bytes + CIFAR_PIXELS
    raw = np.fromfile(file, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"{KEY}: {file} has {raw.size} bytes, not a whole number of {record}-byte records "
            f"({layout.label_bytes} label byte(s) + {CIFAR_PIXELS} pixels): truncated or not "
            "CIFAR's binary version"
        )
    rows = raw.reshape(-1, record)
    which = 0 if coarse or layout.label_bytes == 1 else 1  # CIFAR-100: coarse byte, fine byte
    return _pixels(rows[:, layout.label_bytes :]), rows[:, which].astype(np.int64)


class SafeUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs and nothing else (no ``os.system``, no
    arbitrary constructor): what CIFAR's python-version pickles hold is dicts, lists, bytes,
    numbers and uint8 arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 (CIFAR's files)
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (text in, bytes out)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only plain containers and numpy arrays are read"
            )
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own, wherever it lives now
        return getattr(np, name)


def safe_unpickle(file: Path) -> Any:
    try:
        with open(file, "rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a truncated stream is EOFError, a refused global UnpicklingError
        raise ValueError(
            f"{KEY}: {file} is not a readable CIFAR pickle ({type(e).__name__}: {e})"
        ) from e


def _read_cifar_python(
    file: Path, layout: CifarLayout, coarse: bool
) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(file)
    names = (b"coarse_labels",) if coarse else (b"labels", b"fine_labels")
    label_key = next((k for k in names if isinstance(batch, dict) and k in batch), None)
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if label_key is None or not isinstance(data, np.ndarray):
        raise ValueError(
            f"{KEY}: {file} is not a CIFAR batch: expected a dict with b'data' (uint8 N x "
            f"{CIFAR_PIXELS}) and {' or '.join(map(repr, names))}"
        )
    labels = np.asarray(batch[label_key])
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != CIFAR_PIXELS
        or len(data) != len(labels)
    ):
        raise ValueError(
            f"{KEY}: {file} holds data {data.dtype} {data.shape} and {len(labels)} labels; "
            f"expected uint8 (N, {CIFAR_PIXELS}) and N labels"
        )
    return _pixels(data), as_labels(labels, f"{KEY}: {file}'s {label_key!r}")


# --------------------------------------------------------------------------- IDX (MNIST)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801
GZIP_MAGIC = b"\x1f\x8b"


def load_idx(
    path: str, download: bool = False, url: str | None = None,
    md5: Mapping[str, str] | None = None,
) -> Splits:  # fmt: skip
    """MNIST or Fashion-MNIST from the folder ``path`` holding the four IDX files, each gzipped
    (``.gz``) or raw. ``url``: the folder they are downloaded from, ``md5``: ``{file name: md5}``."""
    root = Path(path)
    names = [n for pair in IDX_FILES.values() for n in pair]
    missing = [n for n in names if _idx_file(root, n) is None]
    if missing and download and url:
        for name in missing:
            gz = f"{name}.gz"
            fetch(f"{url.rstrip('/')}/{gz}", root / gz, None, KEY, md5=(md5 or {}).get(gz))
    elif missing:
        layout = "the IDX files " + ", ".join(f"{n}[.gz]" for n in names)
        raise _missing(root, f"{layout} (missing: {', '.join(missing)})", downloadable=bool(url))
    out = []
    for images, labels in IDX_FILES.values():
        x = read_idx(_idx_file(root, images), IDX_IMAGES)
        y = read_idx(_idx_file(root, labels), IDX_LABELS)
        if len(x) != len(y):
            raise ValueError(
                f"{KEY}={root}: {images} has {len(x)} images but {labels} {len(y)} labels"
            )
        out += [x[..., None], y.astype(np.int64)]
    return tuple(out)  # type: ignore[return-value]


def _idx_file(root: Path, name: str) -> Path | None:
    return next((p for p in (root / f"{name}.gz", root / name) if p.is_file()), None)


def read_idx(file: Path, magic: int) -> np.ndarray:
    """The uint8 array of one IDX file (gzipped or raw), checked against ``magic`` and its size."""
    try:
        raw = file.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:  # a cut gzip stream is EOFError
        raise ValueError(f"{KEY}: {file} cannot be read ({type(e).__name__}: {e})") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic or len(raw) < header:
        what = "images" if magic == IDX_IMAGES else "labels"
        shown = "nothing" if found is None else f"0x{found:08x}"
        raise ValueError(
            f"{KEY}: {file} is not an IDX file of uint8 {what}: its magic number is {shown}, "
            f"expected 0x{magic:08x}"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise ValueError(
            f"{KEY}: {file} has {len(raw) - header} bytes of data, its header declares "
            f"{' x '.join(map(str, dims))} = {size}: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------- image folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".webp")
MODES = {1: "L", 3: "RGB"}  # dataset.shape.in_channels -> Pillow's mode


def image_folder_classes(root: Path) -> tuple[dict[str, dict[str, list[Path]]], bool]:
    """``({split: {class: files}}, whether train/ and test/ split it)`` of an image folder,
    refusing (naming ``dataset.path``) one that is not laid out as ``load_image_folder`` reads it
    or has fewer than two classes. Lists files, decodes nothing."""
    split_dirs = {s: root / s for s in ("train", "test")}
    has_splits = all(d.is_dir() for d in split_dirs.values())
    files = (
        {s: _class_files(d) for s, d in split_dirs.items()}
        if has_splits
        else {"all": _class_files(root)}
    )
    classes = sorted(files["train" if has_splits else "all"])
    if not classes or any(not v for f in files.values() for v in f.values()):
        raise _missing(
            root, "image folders: <class>/<image> for each class, or train/<class>/<image> and "
            f"test/<class>/<image> (images: {', '.join(IMAGE_SUFFIXES)})", downloadable=False,
        )  # fmt: skip
    if len(classes) < 2:
        raise ValueError(
            f"{KEY}={root} has {len(classes)} class folder ({', '.join(classes)}): a classifier "
            "needs at least two, one folder of images per class"
        )
    return files, has_splits


def load_image_folder(
    path: str, grid: Sequence[int], in_channels: int, num_classes: int, data_dir: str,
    test_fraction: float = 0.2, seed: int = 0,
) -> Splits:  # fmt: skip
    """One sub-folder per class (their sorted names are the labels 0, 1, ...): ``<path>/train/``
    and ``<path>/test/`` each holding the class folders, or the class folders directly under
    ``<path>`` (a stratified ``test_fraction`` is then held out). Each image is converted to
    ``in_channels`` (1: grey, 3: RGB) and resized to ``grid``; the decoded arrays are cached in
    ``data_dir`` under a key of every file's name, size and modification time."""
    check_channels(in_channels)
    root = Path(path)
    files, has_splits = image_folder_classes(root)
    classes = sorted(files["train" if has_splits else "all"])
    if len(classes) != num_classes:
        raise ValueError(
            f"dataset.shape.num_classes={num_classes}, but {KEY}={root} has {len(classes)} class "
            f"folders ({', '.join(classes)}): set dataset.shape.num_classes={len(classes)}"
        )
    if has_splits and set(files["test"]) - set(classes):
        extra = ", ".join(sorted(set(files["test"]) - set(classes)))
        raise ValueError(f"{KEY}={root}: test/ has class folders that train/ lacks: {extra}")
    listing = sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for f in files.values() for ps in f.values() for p in ps
    )  # fmt: skip
    key = {
        "root": str(root.resolve()),
        "files": listing,
        "grid": list(grid),
        "channels": in_channels,
    }

    def decode() -> dict[str, np.ndarray]:
        out = {}
        for split, by_class in files.items():
            pairs = [(p, classes.index(c)) for c, ps in sorted(by_class.items()) for p in ps]
            out[f"x_{split}"] = np.stack([_decode(p, grid, in_channels) for p, _ in pairs])
            out[f"y_{split}"] = np.array([label for _, label in pairs], dtype=np.int64)
        return out

    arrays = cached_arrays(data_dir, "image_folder", key, decode)
    if has_splits:
        return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        arrays["x_all"], arrays["y_all"], test_size=test_fraction, stratify=arrays["y_all"],
        random_state=seed,
    )  # fmt: skip
    return x_train, y_train, x_test, y_test


def _class_files(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        return {}
    return {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def _decode(file: Path, grid: Sequence[int], in_channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as image:
            return fit_image(image, grid, in_channels)
    except OSError as e:  # Pillow's error for a truncated or non-image file
        raise ValueError(f"{KEY}: {file} is not a readable image ({type(e).__name__}: {e})") from e


def check_channels(in_channels: int) -> None:
    if in_channels not in MODES:
        raise ValueError(
            f"dataset.shape.in_channels must be 1 (grey) or 3 (RGB) for decoded images, got {in_channels}"
        )


def fit_image(image: Any, grid: Sequence[int], in_channels: int) -> np.ndarray:
    """A Pillow image as uint8 ``(*grid, in_channels)``: converted to grey (1) or RGB (3), and
    resized (bilinear) when its size is not ``grid``."""
    from PIL import Image

    image = image.convert(MODES[in_channels])
    height, width = grid
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, in_channels)


# --------------------------------------------------------------------------- npz

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str, input_type: str = "image") -> Splits:
    """Arrays ``x_train, y_train, x_test, y_test`` (Keras's ``mnist.npz`` has them) from the
    ``.npz`` at ``path``, as stored: uint8 images stay uint8. Greyscale images stored without a
    channel axis, ``(N, H, W)``, get one."""
    file = Path(path)
    if not file.is_file():
        raise _missing(file, f"an .npz file (arrays {', '.join(NPZ_KEYS)})", downloadable=False)
    try:
        with np.load(file, allow_pickle=False) as f:
            found = list(f.files)
            arrays = {k: f[k] for k in NPZ_KEYS if k in found}
    except Exception as e:  # not a zip, a truncated member, an object array (needs pickle)
        raise ValueError(
            f"{KEY}: {file} is not a readable .npz of plain arrays ({type(e).__name__}: {e})"
        ) from e
    if len(arrays) < len(NPZ_KEYS):
        raise ValueError(
            f"{KEY}: {file} holds arrays {', '.join(found) or 'none'}; expected {', '.join(NPZ_KEYS)}"
        )
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if input_type == "image" and x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    for split, x in (("train", x_train), ("test", x_test)):
        if len(x) != len(arrays[f"y_{split}"]):
            raise ValueError(
                f"{KEY}: {file} has {len(x)} x_{split} samples but {len(arrays[f'y_{split}'])} labels"
            )
    return (
        x_train,
        as_labels(arrays["y_train"], f"{KEY}: y_train"),
        x_test,
        as_labels(arrays["y_test"], f"{KEY}: y_test"),
    )
