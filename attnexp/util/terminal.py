"""What a researcher sees at the terminal: each log line once, no advertising, and no warnings
about dependencies' own deprecated calls.

``quiet_dependencies()`` runs first in every entry point (train, eval, report, benchmark); it
imports nothing heavy, so a bad command line still fails in seconds.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

# Packages the project depends on. A deprecation warning attributed to one of them is raised by
# that package's own call into another: only a new release fixes it. One attributed to attnexp
# (or a script) is a call the project makes, and stays visible.
DEPENDENCIES = (
    "hydra",
    "lightning",
    "lightning_fabric",
    "matplotlib",
    "mnist1d",
    "numpy",
    "omegaconf",
    "optuna",
    "pydantic",
    "pytorch_lightning",
    "sklearn",
    "timm",
    "torch",
    "torchmetrics",
    "wandb",
)
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
DEPENDENCY_MODULE = rf"(?:{'|'.join(map(re.escape, DEPENDENCIES))})(?:\.|$)"

# Lightning advertises its cloud services in INFO lines ("💡 Tip: ... try installing litlogger").
TIP_LOGGER = "lightning.pytorch.utilities.rank_zero"
TIP_PREFIX = "💡 Tip:"


def drop_advertising(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(TIP_PREFIX)


def quiet_dependencies() -> None:
    """Filter dependencies' deprecation warnings and Lightning's tips; call once per entry point.

    Filters, not a blanket ignore: the project's own warnings and every other dependency warning
    (e.g. Lightning's hint about ``log_every_n_steps``) still show. A user who asks for warnings
    explicitly (``python -W default ...`` or ``PYTHONWARNINGS``) gets them all.
    """
    if not sys.warnoptions:
        for category in DEPRECATIONS:
            warnings.filterwarnings("ignore", category=category, module=DEPENDENCY_MODULE)
    # Lightning's checkpoint note asks to add the training callbacks; a test-only trainer (eval)
    # restores no callback state, so nothing there needs them.
    warnings.filterwarnings(
        "ignore",
        message="Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
        category=UserWarning,
        module=r"lightning\.pytorch\.trainer\.call$",
    )
    # The training module converts and augments batches on the device (``on_after_batch_transfer``);
    # the data modules leave the hook alone, which is what Lightning's note says it will do.
    warnings.filterwarnings(
        "ignore",
        message="You have overridden `on_after_batch_transfer` in `LightningModule`",
        category=UserWarning,
    )
    tip_logger = logging.getLogger(TIP_LOGGER)  # the very logger Lightning's tips go to
    if drop_advertising not in tip_logger.filters:
        tip_logger.addFilter(drop_advertising)


def print_lightning_logs_once() -> None:
    """Lightning's top package prints its INFO lines with its own handler and also passes them to
    the root logger, so under Hydra (whose root handlers write the terminal and ``train.log``)
    each line printed twice. Its own handler now prints only while the root has none, as
    ``lightning.pytorch`` already decides at import."""
    import lightning  # noqa: F401 (its handler exists once it is imported)

    for handler in logging.getLogger("lightning").handlers:
        if root_has_no_handlers not in handler.filters:
            handler.addFilter(root_has_no_handlers)


def root_has_no_handlers(record: logging.LogRecord) -> bool:
    return not logging.getLogger().handlers


class ConsoleHandler(logging.StreamHandler):
    """Hydra's terminal handler, writing to ``sys.stdout`` as it is at each line: while the
    progress bar is drawn, Rich points ``sys.stdout`` at a proxy that prints above the bar, so a
    line logged then lands there instead of in the middle of the bar."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; the property decides
        pass
