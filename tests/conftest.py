"""Shared test helpers: compose the real config as the CLI would, tiny and on CPU."""

from __future__ import annotations

import http.server
import os
import re
import sys
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from attnexp.config.attention import available
from attnexp.config.compose import compose_train_config, register_resolvers
from attnexp.config.paths import CONFIG_DIR
from attnexp.data.shape import DataShape

register_resolvers()

# The models here are tiny: one thread is as fast, and far faster on a CPU other jobs share.
torch.set_num_threads(1)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

ATTENTIONS = available()
ALL_BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml"))
# Image classifiers only (they refuse sequences, tokens and task=lm): tests/test_resnet_vit.py.
IMAGE_BACKBONES = ("resnet", "vit")
BACKBONES = [b for b in ALL_BACKBONES if b not in IMAGE_BACKBONES]  # every dataset and the LM


def _is_lm(dataset: str) -> bool:
    """Whether a dataset yaml (or one it extends through its defaults) declares ``task: lm``."""
    node = OmegaConf.load(CONFIG_DIR / "dataset" / f"{dataset}.yaml")
    parents = [d for d in node.get("defaults", []) if d != "_self_"]
    return node.get("shape", {}).get("task") == "lm" or any(map(_is_lm, parents))


def _reads_files(dataset: str) -> bool:
    """Whether a dataset yaml reads its data from ``dataset.path`` or ``dataset.name`` (files or a
    Hugging Face dataset the tests must write first) rather than generating it."""
    node = OmegaConf.load(CONFIG_DIR / "dataset" / f"{dataset}.yaml")
    parents = [d for d in node.get("defaults", []) if d != "_self_"]
    return bool({"path", "name"} & set(node.keys())) or any(map(_reads_files, parents))


ALL_DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
FILE_DATASETS = [d for d in ALL_DATASETS if _reads_files(d)]
# Classification generated offline, no file needed: the grid's datasets.
DATASETS = [d for d in ALL_DATASETS if not _is_lm(d) and not _reads_files(d)]
LM_DATASETS = [d for d in ALL_DATASETS if _is_lm(d)]

# Small enough for a 2-core CI machine; num_samples keeps every class present.
TINY = ["trainer=cpu", "logger=csv", "backbone.depth=1", "backbone.dim=16"]
TINY_DATA = {
    "mnist1d": ["dataset.source.num_samples=400"],
    "digits": ["dataset.source.num_samples=300"],
    "mqar": ["dataset.source.num_samples=400"],
}


def tiny(attention: str, backbone: str, dataset: str, data_dir: Path) -> list[str]:
    """Overrides for a tiny CPU run of one grid cell."""
    return [
        f"attention={attention}",
        f"backbone={backbone}",
        f"dataset={dataset}",
        f"paths.data_dir={data_dir}",
        *TINY,
        *TINY_DATA[dataset],
    ]


def example_input(shape: DataShape, batch: int = 5) -> torch.Tensor:
    """A random batch of data of this ``shape``: token ids or tokens-last continuous inputs."""
    if shape.is_tokens:
        return torch.randint(0, shape.vocab_size, (batch, *shape.sample_shape))
    return torch.randn(batch, *shape.sample_shape)


def compose_cfg(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The resolved train config for ``overrides``, as ``attnexp.cli`` hands it to ``train``."""
    return compose_train_config(overrides, output_dir if output_dir is not None else "unused")


# The example variant of docs/extending.md, its module and its yaml exactly as the page gives them,
# written to a temporary config root by ``toy_root``: the contract tests, a sweep, the report, the
# figures and the benchmark take it with no edit elsewhere (tests/test_attention.py,
# tests/test_new_variant.py, tests/test_extending.py).
TOY = "toy"


def example_variant() -> tuple[str, str]:
    """``(module source, yaml)`` of the example under "Add an attention variant" in
    docs/extending.md: its first Python and first YAML block."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    section = page[page.index("## Add an attention variant") :]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert python and yaml, "docs/extending.md lost its example variant"
    return python.group(1), yaml.group(1)


TOY_MODULE, TOY_YAML = example_variant()


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A config root with ``attention/toy.yaml``; its module ``toy_mixer`` is importable from it."""
    root = tmp_path_factory.mktemp("toy")
    (root / "toy_mixer.py").write_text(TOY_MODULE)
    (root / "attention").mkdir()
    (root / "attention" / f"{TOY}.yaml").write_text(TOY_YAML)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One cache of generated datasets for the whole session."""
    return tmp_path_factory.mktemp("data")


# A loopback HTTP server for download tests (tests/test_download.py, tests/test_image_data.py):
# nothing real is downloaded.
SERVE_AT_MOST_S = 60  # the server stops itself even if a test hangs


@pytest.fixture
def no_proxy(monkeypatch):
    """A proxy set in the environment must not intercept the loopback server."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def server(no_proxy):
    """``(base url, files, requests)``: serves ``files[name]`` bytes; counts requests per name."""
    files: dict[str, bytes] = {}
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            name = self.path.lstrip("/")
            requests.append(name)
            if name not in files:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            self.wfile.write(files[name])

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    watchdog = threading.Timer(SERVE_AT_MOST_S, httpd.shutdown)
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files, requests
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
