"""Third-party messages a dnlseg user cannot act on, silenced in one place (the ``dnlseg`` command and the CLI call it).

Imports nothing heavy: ``dnlseg --help`` calls it without loading Lightning.
"""

from __future__ import annotations

import logging
import os
import warnings

# Third-party messages a user cannot act on: Lightning's advertisement for its cloud logger, and deprecations
# inside Lightning's and jsonargparse's own calls.
LIGHTNING_TIP = "💡 Tip:"
IGNORED_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def silence_third_party() -> None:
    """Silence, in one place, the third-party tips and deprecation warnings a dnlseg user cannot act on."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropLightningTips) for f in rank_zero.filters):
        rank_zero.addFilter(DropLightningTips())
