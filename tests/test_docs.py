"""The README is the front door and docs/ holds the rest: links resolve, options named exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnexp.config.paths import CONFIG_DIR
from tests.conftest import ALL_BACKBONES, ALL_DATASETS, ATTENTIONS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
# `<group>=<option>[,<option>...]` as a command line writes it; `attention.score=` is a key, not a group.
GROUP_CHOICE = re.compile(r"(?<![\w./])([a-z_]+)=(\w+(?:,\w+)*)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(h) for h in HEADING.findall(page.read_text())}


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]


def test_anchor_rule_on_known_headings():
    assert github_anchor("Measured: score × normalisation on MQAR") == (
        "measured-score--normalisation-on-mqar"
    )
    assert github_anchor("Weights & Biases") == "weights--biases"
    assert github_anchor("Beyond softmax attention: `linear` and `node`") == (
        "beyond-softmax-attention-linear-and-node"
    )


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert set(PAGES[1:]) <= linked, "docs pages the README does not link to"


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of that level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize(
    "heading, names",
    [("Attention variants", ATTENTIONS), ("Backbones", ALL_BACKBONES), ("Datasets", ALL_DATASETS)],
)
def test_readme_tables_list_every_option(heading, names):
    table = section(README.read_text(), heading)
    rows = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert rows == set(names), f"README's {heading} table lists {sorted(rows)}, conf/ has {names}"


def test_options_named_in_commands_exist():
    unknown = []
    for page in PAGES:
        for group, options in GROUP_CHOICE.findall(page.read_text()):
            if not (CONFIG_DIR / group).is_dir():
                continue
            for option in options.split(","):
                if not (CONFIG_DIR / group / f"{option}.yaml").exists():
                    unknown.append(f"{page.name}: {group}={option}")
    assert not unknown, f"options with no config in conf/: {unknown}"


CODE_PATH = re.compile(r"(?<![\w/.])((?:attnexp|tests|scripts|conf)/[\w/]+\.(?:py|yaml))")
DOTTED = re.compile(r"(?<![\w.])(attnexp(?:\.\w+)+)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_code_a_page_names_exists(page):
    """Every file path (``attnexp/runs/record.py``) and dotted name (``attnexp.runs.prepare``,
    ``attnexp.tasks.optim.warmup_cosine``) a page names exists: moving code cannot leave a page
    pointing at nothing."""
    import importlib

    from attnexp.runs.identity import CANONICAL_TARGETS

    former = tuple(v.rstrip(".") for v in CANONICAL_TARGETS.values())  # names before a move
    text = page.read_text()
    missing = [p for p in CODE_PATH.findall(text) if "<" not in p and not (ROOT / p).exists()]
    for name in set(DOTTED.findall(text)) - {n for n in DOTTED.findall(text) if n.startswith(former)}:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
    assert not missing, f"{page.name} names code that does not exist: {sorted(set(missing))}"
