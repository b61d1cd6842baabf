"""The comparison report's HTML page: the Markdown's tables, text and figures, self-contained."""

from __future__ import annotations

import base64
import re

import pytest

from attnexp import report as rp
from attnexp.report.html import HtmlError, markdown_to_html
from tests.test_report import sweep  # noqa: F401 (a fixture)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def embedded(page: str) -> list[bytes]:
    return [base64.b64decode(d) for d in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_a_known_page(tmp_path):
    (tmp_path / "fig.png").write_bytes(PNG)
    markdown = "\n".join([
        "# Comparison",
        "",
        "Text with `a<b` & more.",
        "",
        "| attention | note |",
        "|---|---|",
        "| mha | x \\| y |",
        "| <script> | – |",
        "",
        "- first",
        "- second",
        "![fig](fig.png)",
    ])  # fmt: skip
    page = markdown_to_html(markdown, tmp_path)
    assert "<h1>Comparison</h1>" in page
    assert "<p>Text with <code>a&lt;b</code> &amp; more.</p>" in page
    assert "<tr><th>attention</th><th>note</th></tr>" in page
    assert "<tr><td>mha</td><td>x | y</td></tr>" in page  # the escaped bar stays in its cell
    assert "<tr><td>&lt;script&gt;</td><td>–</td></tr>" in page
    assert "<script>" not in page
    assert "<ul><li>first</li><li>second</li></ul>" in page
    assert embedded(page) == [PNG]


@pytest.mark.parametrize("src", ["missing.png", "../fig.png", "https://example.org/fig.png"])
def test_an_image_not_beside_the_report_is_refused(tmp_path, src):
    (tmp_path / "fig.png").write_bytes(PNG)
    (tmp_path / "sub").mkdir()
    with pytest.raises(HtmlError, match="not a file beside the report"):
        markdown_to_html(f"![x]({src})", tmp_path / "sub")


def test_the_report_writes_the_page_with_every_row_and_figure(sweep):  # noqa: F811
    report = rp.build_report([sweep])
    page = (sweep / "comparison.html").read_text()
    markdown = (sweep / rp.MD_FILE).read_text()
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    separators = sum(1 for line in table_lines if set(line) <= set("|-"))
    assert page.count("<tr>") == len(table_lines) - separators
    pngs = [p for p in report.files if p.suffix == ".png"]
    assert pngs and embedded(page) == [p.read_bytes() for p in pngs]
    assert sweep / "comparison.html" in report.files
    outside_images = re.sub(r'src="data:[^"]*"', "", page)
    assert "src=" not in outside_images and "href" not in outside_images  # nothing to fetch
