"""The comparison report: every ``results.json`` under one or more sweep dirs, as one table (with
intervals and tests against a baseline), figures, learning curves, Markdown, CSV and one HTML page.

Modules, bottom to top: ``stats`` (numbers only), ``rows`` (runs grouped into rows by their cell),
``table`` (columns, Markdown, CSV), ``figures``, ``curves`` and ``zoology_figure`` (PNGs),
``best_over`` (rows split by config keys, the best of a swept one kept), ``html``, and ``build``
(read, aggregate, write; the ``attnexp-compare`` command). What this ``__init__`` exports is the
package's API for the sweep summary, scripts and tests.

May import: attnexp.config, attnexp.runs, attnexp.tasks, attnexp.util. No torch.
"""

from attnexp.report.build import build_report, log_to_wandb, main
from attnexp.report.rows import (
    BASELINE,
    CSV_FILE,
    MD_FILE,
    MISSING,
    Report,
    ReportError,
    Row,
    compare_to_baseline,
    rank_across_datasets,
    summarize,
)
from attnexp.report.table import table_data

__all__ = [
    "BASELINE", "CSV_FILE", "MD_FILE", "MISSING", "Report", "ReportError", "Row", "build_report",
    "compare_to_baseline", "log_to_wandb", "main", "rank_across_datasets", "summarize",
    "table_data",
]  # fmt: skip
