"""weight_files: the checkpoint/model fit check names every differing, missing and extra parameter."""

import pytest
import torch
from torch import nn

from dnlseg.weight_files import CheckpointMismatchError, check_state_dict_fits


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))


def test_a_fitting_state_dict_passes():
    check_state_dict_fits(model(), model().state_dict())


def test_every_differing_shape_is_listed_with_both_shapes():
    state = model().state_dict()
    state["0.weight"] = torch.zeros(8, 3, 1, 1)
    state["1.running_mean"] = torch.zeros(8)
    with pytest.raises(CheckpointMismatchError) as error:
        check_state_dict_fits(model(), state, source="encoder file")
    lines = str(error.value).splitlines()
    assert lines[0] == "the encoder file does not fit the model built from this config:"
    assert lines[1:4] == [
        "2 parameter shape(s) differ:",
        "  0.weight: encoder file (8, 3, 1, 1) vs model (4, 3, 1, 1)",
        "  1.running_mean: encoder file (8,) vs model (4,)",
    ]
    assert lines[-1] == "resume with the config the checkpoint was trained with (the run's saved config.yaml)"


def test_missing_and_extra_parameters_are_counted_and_named():
    state = model().state_dict()
    del state["0.bias"], state["1.weight"]
    state.update({"2.weight": torch.zeros(1), "extra.bias": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError) as error:
        check_state_dict_fits(model(), state)
    lines = str(error.value).splitlines()
    assert lines[1] == "2 parameter(s) of the model are not in the checkpoint: 0.bias, 1.weight"
    assert lines[2] == "2 parameter(s) of the checkpoint are not in the model: 2.weight, extra.bias"
    assert "shape" not in str(error.value)


def test_long_lists_name_the_first_ten():
    big = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(12)])
    with pytest.raises(CheckpointMismatchError, match=r"12 parameter\(s\) of the model are not in the checkpoint") as e:
        check_state_dict_fits(big, {})
    first_ten = ", ".join(f"{i}.weight" for i in ["0", "1", "10", "11", "2", "3", "4", "5", "6", "7"])  # as strings
    assert str(e.value).splitlines()[1].endswith(": " + first_ten)
    with pytest.raises(CheckpointMismatchError) as e:
        check_state_dict_fits(nn.Sequential(), big.state_dict())
    assert str(e.value).splitlines()[1].endswith(": " + first_ten)  # extra parameters: the first ten too


def test_non_tensor_entries_are_not_shape_checked():
    state = {**model().state_dict()}
    state["1.num_batches_tracked"] = 3  # an int where the model has a tensor: no shape to compare
    check_state_dict_fits(model(), state)
