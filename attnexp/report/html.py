"""The comparison report as one self-contained HTML page (``comparison.html``), figures embedded.

The page is rendered from ``comparison.md`` itself, so the Markdown stays the one place the
report's content is written: this module knows only the few constructs that file uses (``#``
headings, pipe tables with ``\\|`` escapes, ``![alt](file.png)`` images beside it, ``- `` bullets,
inline ``code`` and paragraphs). Images are inlined as base64 data URIs, so the page can be mailed
or attached to a W&B run on its own; an image that is not a file beside the report is refused
rather than linked.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

HTML_FILE = "comparison.html"
IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:110em}"
    "table{border-collapse:collapse;font-size:0.9em}"
    "th,td{border:1px solid #bbb;padding:0.2em 0.5em;text-align:left}"
    "th{background:#eee}img{max-width:100%;display:block;margin:1em 0}"
)


class HtmlError(ValueError):
    """The Markdown names an image the page cannot embed."""


def inline(text: str) -> str:
    """Escaped text with ``code`` spans."""
    parts = text.split("`")
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def table_cells(line: str) -> list[str]:
    """The cells of one pipe-table line; ``\\|`` is a literal bar inside a cell."""
    body = line.strip()[1:-1].replace("\\|", "\0")
    return [cell.strip().replace("\0", "|") for cell in body.split("|")]


def render_table(lines: list[str]) -> str:
    header, rows = table_cells(lines[0]), [table_cells(line) for line in lines[2:]]
    out = ["<table>", "<tr>" + "".join(f"<th>{inline(c)}</th>" for c in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join([*out, "</table>"])


def embedded_image(alt: str, src: str, base_dir: Path) -> str:
    path = base_dir / src
    if src.startswith(("/", "http:", "https:")) or ".." in Path(src).parts or not path.is_file():
        raise HtmlError(f"image {src!r} is not a file beside the report in {base_dir}")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def markdown_to_html(markdown: str, base_dir: Path, title: str = "Comparison") -> str:
    """The page of ``markdown`` (a ``comparison.md``) with its images read from ``base_dir``."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            body.append(render_table(block))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        image = IMAGE.match(line)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif image:
            body.append(embedded_image(image["alt"], image["src"], base_dir))
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
        i += 1
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
