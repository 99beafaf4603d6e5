"""LogitScale: s = base / tau in both temperature forms, what is a parameter and what is configuration."""

import math

import pytest
import torch

from dnlseg.context.logit_scale import LogitScale


def test_the_default_is_one_over_sqrt_channels_with_a_fixed_unit_temperature():
    scale = LogitScale(16)
    assert scale().item() == pytest.approx(0.25) and scale.temperature.item() == pytest.approx(1.0)
    assert list(scale.parameters()) == [] and list(scale.state_dict()) == []  # configuration, not state


def test_a_learned_log_temperature_is_a_parameter_and_the_scale_follows_it():
    scale = LogitScale(4, temperature=0.5, learn_temperature=True)
    assert [name for name, _ in scale.named_parameters()] == ["log_temperature"]
    with torch.no_grad():
        scale.log_temperature.fill_(math.log(2.0))
    assert scale().item() == pytest.approx(0.5 / 2.0) and scale.temperature.item() == pytest.approx(2.0)


def test_the_softplus_temperature_property_is_one_over_softplus():
    scale = LogitScale(16, temperature=0.05, learn_temperature=True, temperature_form="softplus")
    assert [name for name, _ in scale.named_parameters()] == ["softplus_temperature"]
    assert scale.temperature.item() == pytest.approx(0.05)
    with torch.no_grad():
        scale.softplus_temperature.fill_(0.0)
    assert scale.temperature.item() == pytest.approx(1 / math.log(2.0))
    assert scale().item() == pytest.approx(math.log(2.0) / 4)


def test_without_fixbug_the_learned_scale_multiplies_by_sqrt_channels():
    scale = LogitScale(9, temperature=0.5, learn_temperature=True, temperature_form="softplus", fixbug=False)
    assert scale().item() == pytest.approx(3 / 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=0.0), r"^temperature=0.0 must be > 0 \(the paper uses 0.05\)$"),
        (dict(temperature=float("nan")), r"^temperature=nan must be > 0"),
        (dict(temperature_form="exp"), r"^temperature_form='exp' is not one of 'log', 'softplus'$"),
        (
            dict(temperature_form="softplus"),
            r"^temperature_form='softplus' is a learned temperature: set learn_temperature=true$",
        ),
    ],
)
def test_bad_settings_raise_naming_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LogitScale(16, **kwargs)
