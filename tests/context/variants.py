"""Every context-block variant of SCIENCE.md section 3 (and the NL modes), as constructors for the contract tests."""

from functools import partial

from torch import nn

from dnlseg.context import DisentangledNonLocal2d, NonLocal2d

VARIANTS = {
    "nl_embedded_gaussian": partial(NonLocal2d),
    "nl_dot_product": partial(NonLocal2d, mode="dot_product"),
    "nl_gaussian": partial(NonLocal2d, mode="gaussian"),
    "nl_downsample": partial(NonLocal2d, downsample=True),
    "dnl": partial(DisentangledNonLocal2d),
    "dnl_shared_key": partial(DisentangledNonLocal2d, unary="shared_key"),
    "pairwise_nl": partial(DisentangledNonLocal2d, unary=None),
    "unary_nl": partial(DisentangledNonLocal2d, pairwise=False),
    "dnl_downsample": partial(DisentangledNonLocal2d, downsample=True),
    "dnl_learned_temperature": partial(DisentangledNonLocal2d, learn_temperature=True, temperature=0.5),
    "dnl_groupnorm": partial(DisentangledNonLocal2d, norm_layer=partial(nn.GroupNorm, 2)),
    "dnl_no_norm": partial(DisentangledNonLocal2d, norm_layer=None),
}
