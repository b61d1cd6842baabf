"""Markdown tables, as the comparison report and the benchmark write them."""

from __future__ import annotations


def md_table(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table; a ``|`` inside a cell is escaped and a newline becomes a space."""

    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in line) + " |" for line in lines]
    return "\n".join(out)
