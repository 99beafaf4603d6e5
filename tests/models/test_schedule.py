"""The recipes' poly schedule equals mmengine's PolyLR(eta_min=1e-4, power=0.9) iteration by iteration."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dnlseg.models import SegmentationModule
from dnlseg.models.param_groups import ParamGroup
from dnlseg.models.schedule import OptimizationOptions, PolyLR, mmseg_total_iters
from tests.helpers import tiny_network


def sgd_with_two_groups() -> torch.optim.SGD:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=0.01, momentum=0.9)


def lr_sequence(optimizer, scheduler, iterations: int) -> list[list[float]]:
    lrs = []
    for _ in range(iterations):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def test_poly_lr_over_200_iterations_equals_mmengines():
    from mmengine.optim.scheduler import PolyLR as MMEnginePolyLR

    reference_optimizer = sgd_with_two_groups()
    reference = MMEnginePolyLR(reference_optimizer, eta_min=1e-4, power=0.9, begin=0, end=200, by_epoch=False)
    expected = lr_sequence(reference_optimizer, reference, 200)
    optimizer = sgd_with_two_groups()
    ours = lr_sequence(optimizer, PolyLR(optimizer, mmseg_total_iters(200), power=0.9, eta_min=1e-4), 200)
    torch.testing.assert_close(
        torch.tensor(ours, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert ours[-1] == pytest.approx([1e-4, 1e-4], rel=1e-12)  # the last iteration trains at the floor
    assert ours[0] == [0.01, 0.1]


def test_the_module_builds_that_schedule_from_the_run_length_and_its_arguments():
    model = SegmentationModule(
        num_classes=3,
        network=tiny_network(),
        optimization=OptimizationOptions(
            poly_eta_min=1e-4, poly_power=0.9, param_groups=[ParamGroup(r"^network\.encoder\.", lr_mult=0.1)]
        ),
    )
    model._trainer = SimpleNamespace(estimated_stepping_batches=200)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, PolyLR) and scheduler.total_iters == 199 and scheduler.eta_min == 1e-4
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.01, 0.001])


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ValueError, match="total_iters=0 must be >= 1"):
        PolyLR(sgd_with_two_groups(), 0)
    with pytest.raises(ValueError, match="eta_min=-1 must be >= 0"):
        PolyLR(sgd_with_two_groups(), 10, eta_min=-1)
