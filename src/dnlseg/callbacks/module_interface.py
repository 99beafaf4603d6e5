"""What the analysis callbacks may use of the LightningModule they run on, written down once.

Every analysis needs only an ``nn.Module`` holding ``ContextBlock``s (``dnlseg.context``: the blocks' own contract
says what each has). Beyond that, a callback names the protocols it needs in ``requires`` and gets them checked at
``setup``, before anything runs (``check_module``); a module that lacks a member gets one line naming the member,
the protocol and the callback, not an ``AttributeError`` deep in a training step. Any LightningModule that has the
members works, a ``SegmentationModule`` or not.

Optional members, read with a default where a module lacks them (``ignore_index_of``, ``class_names_of``,
``evaluated_step_of``): ``hparams["ignore_index"]`` (255), ``class_names`` (none), ``evaluated_step`` (the
trainer's step) and ``inference.mode`` (``"whole"``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from dnlseg.errors import ModuleInterfaceError


@runtime_checkable
class LossTerms(Protocol):
    """A module that computes its training loss on a batch, term by term (``SegmentationModule.losses``).

    An analysis that takes gradients of the training loss (``SeparationProbe``) runs this in an extra forward.
    """

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The loss terms of ``batch`` ({"image": (N, 3, H, W), "mask": (N, H, W)}); ``"loss"``: their weighted
        sum, the one training minimises."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """The names a protocol declares (methods and annotated attributes), in declaration order."""
    names = [n for n in vars(protocol) if not n.startswith("_")]
    return names + [n for n in getattr(protocol, "__annotations__", {}) if n not in names]


def check_module(callback: object, module: Any, protocols: tuple[type, ...]) -> None:
    """Raise ``ModuleInterfaceError`` naming the first member of ``protocols`` that ``module`` lacks."""
    for protocol in protocols:
        for member in protocol_members(protocol):
            if not hasattr(module, member):
                raise ModuleInterfaceError(
                    f"trainer.callbacks: {type(callback).__name__} needs the module's `{member}` (protocol "
                    f"{protocol.__module__}.{protocol.__qualname__}), which {type(module).__name__} does not have: "
                    f"add it to the module or remove {type(callback).__name__} from trainer.callbacks"
                )


def ignore_index_of(module: Any) -> int:
    """The module's ``hparams["ignore_index"]``: the label value without loss or metric; 255 without one."""
    return int(getattr(module, "hparams", {}).get("ignore_index", 255))


def class_names_of(module: Any) -> list[str] | None:
    """The module's ``class_names`` (legends of the figures); None without them."""
    return getattr(module, "class_names", None)


def evaluated_step_of(module: Any, default: int) -> int:
    """The training step of the module's weights (``evaluated_step``: the checkpoint's outside a fit); ``default``
    (the trainer's step) for a module that does not record one."""
    return getattr(module, "evaluated_step", default)


def inference_mode_of(module: Any) -> str:
    """How the module evaluates whole images (``inference.mode``: ``"whole"`` or ``"slide"``); ``"whole"`` without."""
    return getattr(getattr(module, "inference", None), "mode", "whole")
