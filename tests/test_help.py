"""``python train.py --help`` helps: every group with its options, the keys most runs change with
their true defaults, and where the docs are; everything it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from attnexp.config.paths import CONFIG_DIR
from tests.conftest import SUBPROCESS_ENV, compose_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_groups_the_keys_with_their_defaults_and_the_docs():
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert len(text.splitlines()) < 80  # a page, not the whole config
    for group in ("attention", "backbone", "dataset", "experiment", "optim", "trainer", "logger"):
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in text

    keys = text[text.index("== The keys most runs change ==") : text.index("== Docs ==")]
    settings = re.findall(r"^  (\S+?)=(\S+)\s+\S", keys, re.M)
    assert len(settings) == 10, settings
    cfg = compose_cfg([])
    for key, shown in settings:
        if (CONFIG_DIR / key).is_dir():  # a group: the option exists
            assert (CONFIG_DIR / key / f"{shown}.yaml").is_file(), (key, shown)
        elif shown.startswith("<"):  # a placeholder: a key of the config
            assert key in cfg, key
        else:  # the default shown is the default
            assert OmegaConf.select(cfg, key) == type(OmegaConf.select(cfg, key))(shown), key

    docs = re.findall(r"^  (\S+\.md)\s", text[text.index("== Docs ==") :], re.M)
    assert len(docs) >= 5 and all((ROOT / page).is_file() for page in docs), docs
