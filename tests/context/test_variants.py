"""VARIANTS: each entry builds its block and writes the ``model.network.context`` value a config names it by."""

import importlib

import torch

from dnlseg.context import BLOCKS, VARIANTS, DisentangledNonLocal2d, GlobalContext2d, NonLocal2d, variant_of


def test_build_passes_the_variant_arguments_and_overrides_replace_them():
    block = VARIANTS["pairwise_nl"].build(8)
    assert isinstance(block, DisentangledNonLocal2d) and block.in_channels == 8 and block.unary is None
    overridden = VARIANTS["pairwise_nl"].build(8, unary="conv", reduction=4)
    assert overridden.unary is not None and overridden.channels == 2
    assert isinstance(VARIANTS["nl"].build(4), NonLocal2d) and VARIANTS["baseline"].build(8) is None


def test_context_config_names_an_importable_class_and_copies_the_arguments():
    variant = VARIANTS["nl_fork"]
    config = variant.context_config()
    assert config == {
        "class_path": "dnlseg.context.NonLocal2d",
        "init_args": {
            "whitening": "bn_like",
            "learn_temperature": True,
            "temperature_form": "softplus",
            "global_context": True,
        },
    }
    config["init_args"]["whitening"] = "bn"
    assert variant.init_args["whitening"] == "bn_like"  # a copy: editing the config leaves the table alone
    for variant in VARIANTS.values():
        config = variant.context_config()
        if variant.block is None:
            assert config is None
            continue
        module, name = config["class_path"].rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) is variant.block


def test_every_variants_block_is_recognised_as_that_variant_at_any_width_and_setting_no_entry_makes():
    for name, variant in VARIANTS.items():
        if variant.block is None:
            continue
        assert variant_of(variant.build(32)) == (name, variant.label)
        other = {"reduction": 8} if variant.block is GlobalContext2d else {"reduction": 4, "temperature": 0.5}
        assert variant_of(variant.build(64, **other)) == (name, variant.label)
    assert variant_of(NonLocal2d(16, mode="dot_product")) == ("nl", "NL")


def test_a_block_of_the_blocks_table_is_named_by_its_entry():
    for name, entry in BLOCKS.items():
        assert variant_of(entry.build(16)) == (name, entry.label)


def test_a_block_of_no_variant_is_named_by_its_class():
    class MyBlock(torch.nn.Module):
        pass

    assert variant_of(MyBlock()) == ("MyBlock", "MyBlock")


def test_an_entry_that_differs_by_a_submodules_class_only_is_told_apart_and_the_most_specific_entry_wins(
    monkeypatch,
):
    """A table entry whose block differs from the default only by the class of a submodule (``out_norm``:
    Identity instead of BatchNorm2d), named so that it sorts before ``nl``: a block built so is that entry (the
    more specific match), a default block is still ``nl``."""
    from dnlseg.context import variants

    table = {"a_plain_norm": variants.Variant("NL, no output norm", NonLocal2d, {"norm_layer": None}), **VARIANTS}
    monkeypatch.setattr(variants, "VARIANTS", table)
    variants._distinguishing.cache_clear()
    try:
        assert variant_of(NonLocal2d(32, norm_layer=None)) == ("a_plain_norm", "NL, no output norm")
        assert variant_of(NonLocal2d(32)) == ("nl", "NL")
    finally:
        variants._distinguishing.cache_clear()
