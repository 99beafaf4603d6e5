"""The private LightningCLI methods dnlseg overrides (no public hook does what they do) are still there, with the
parameters the overrides rely on, and still called by LightningCLI; a Lightning release that changes one fails here
with the method's name and the Lightning version, not somewhere in a fit.

- ``_prepare_subcommand_parser(klass, subcommand, **kwargs)``: ``DnlsegCLI`` adds ``--output_dir`` to the parsers
  of validate, test and predict only (``add_arguments_to_parser`` is not told which subcommand it builds).
- ``_parse_ckpt_path()``: ``DnlsegCLI`` checks the checkpoint file instead of letting Lightning replace the model
  options of the config and of the command line by the checkpoint's hyperparameters.
- ``_set_seed()``: ``ConfigReader`` (``resolve_config``) only parses, so it must not seed the caller's RNGs.
"""

import inspect

import lightning
import pytest
from lightning.pytorch.cli import LightningCLI

from dnlseg.cli.analyze import AnalysisCLI
from dnlseg.cli.export import ModelReader
from dnlseg.cli.lightning_cli import ConfigReader, DnlsegCLI

# name -> (the parameters our override takes and passes on, the LightningCLI method that calls it, our class)
OVERRIDDEN = {
    "_prepare_subcommand_parser": (["self", "klass", "subcommand", "kwargs"], "_add_subcommands", DnlsegCLI),
    "_parse_ckpt_path": (["self"], "__init__", DnlsegCLI),
    "_set_seed": (["self"], "__init__", ConfigReader),
}


@pytest.mark.parametrize("name", OVERRIDDEN)
def test_the_private_lightningcli_methods_dnlseg_overrides_are_unchanged(name):
    parameters, caller, ours = OVERRIDDEN[name]
    where = f"LightningCLI.{name} (lightning {lightning.__version__}), overridden by {ours.__module__}.{ours.__name__}"
    assert hasattr(LightningCLI, name), f"{where}: Lightning no longer has it; find the hook that replaced it"
    assert name in vars(ours), f"{where}: dnlseg no longer overrides it; remove it from this test"
    found = list(inspect.signature(getattr(LightningCLI, name)).parameters)
    assert found == parameters, f"{where}: its parameters are now {found}, the override expects {parameters}"
    assert list(inspect.signature(vars(ours)[name]).parameters) == parameters, f"{where}: the override's parameters"
    assert f"self.{name}(" in inspect.getsource(getattr(LightningCLI, caller)), (
        f"{where}: LightningCLI.{caller} no longer calls it, so the override would do nothing"
    )


def test_no_other_private_lightningcli_method_is_overridden():
    """A new override of a private method belongs in ``OVERRIDDEN`` (or better, a public hook)."""
    private = {
        name
        for cls in (DnlsegCLI, ConfigReader, AnalysisCLI, ModelReader)
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and hasattr(LightningCLI, name)
    }
    assert private == set(OVERRIDDEN)
