"""L_spurious says what it can (issue 32): its value on shuffled Z (the floor) and whether any group was large
enough, logged beside it; HSIC_u switchable by train.hsic_estimator and as a registry row."""
import torch

from causal_lib.defenses import registry
from causal_lib.defenses.causal import spurious_diagnostics


def test_floor_and_active_share():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(32, 16, generator=g)
    z = torch.nn.functional.one_hot(torch.randint(0, 3, (32,), generator=g), 3).float()
    groups = torch.tensor([0] * 16 + [1] * 16)
    biased = spurious_diagnostics(r, z, groups, unbiased=False)
    unbiased = spurious_diagnostics(r, z, groups, unbiased=True)
    assert biased["spurious_active"] == 1.0 and biased["spurious_floor"] > 0  # the biased estimate's floor
    assert abs(unbiased["spurious_floor"]) < biased["spurious_floor"]
    small = spurious_diagnostics(r[:6], z[:6], torch.arange(6), unbiased=False)  # no group of >= 4: inert
    assert small["spurious_active"] == 0.0 and small["spurious_floor"] == 0.0


def test_unbiased_estimator_is_a_registry_row_and_a_config_key():
    from causal_lib.config import ConfigError, config_from_dict

    d = registry.get("causal_hsic_u")
    assert d.trains and dict(d.train_options)["hsic_estimator"] == "unbiased"
    assert config_from_dict({"train": {"hsic_estimator": "unbiased"}}).train.hsic_estimator == "unbiased"
    try:
        config_from_dict({"train": {"hsic_estimator": "mine"}})
    except ConfigError as e:
        assert "hsic_estimator" in str(e)
    else:
        raise AssertionError("an unknown estimator was accepted")
