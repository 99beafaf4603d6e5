"""third_party: the tips and deprecation warnings a user cannot act on are silenced, everything else is kept."""

import logging
import warnings

from dnlseg.cli.third_party import DropLightningTips, silence_third_party


def test_third_party_tips_and_deprecations_are_silenced_in_one_place():
    silence_third_party()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_third_party()  # re-applied inside the catch: what the command does at start-up
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something the user can act on", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user can act on"]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = logging.LogRecord(rank_zero.name, logging.INFO, "", 0, "💡 Tip: For seamless cloud logging", None, None)
    assert any(isinstance(f, DropLightningTips) for f in rank_zero.filters) and not rank_zero.filter(tip)
