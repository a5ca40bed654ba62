"""Tests of the error-rate certificates in causal_lib.verification.pac_bayes: Langford's test-set bound (hand
values, a brute-force inversion, coverage), the Monte-Carlo-corrected PAC-Bayes bound (a hand computation,
never below the uncorrected bound) and the vacuous flag with its cause."""
import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import rel_entr

from causal_lib.verification import pac_bayes


def bisect(f, lo: float, hi: float, steps: int = 200) -> float:
    """The largest x in [lo, hi] with f(x) true, for f true on [lo, x*] and false after (plain bisection,
    independent of the library's brentq)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) else (lo, mid)
    return lo


def kl_bernoulli(q: float, p: float) -> float:
    return float(rel_entr(q, p) + rel_entr(1 - q, 1 - p))


# ------------------------------------------------------------------ test-set bound

def test_test_set_bound_zero_errors_is_closed_form():
    b = pac_bayes.test_set_bound(0, 100, delta=0.05)
    # P(Binomial(100, p) <= 0) = (1 - p)^100 = 0.05
    assert b["bound"] == pytest.approx(1 - 0.05 ** (1 / 100), abs=1e-10)
    assert b["bound"] == pytest.approx(0.0295, abs=1e-4)
    assert b["errors"] == 0 and b["n"] == 100 and b["empirical_error"] == 0.0 and b["delta"] == 0.05
    assert b["kind"] == "test-set binomial (KL = 0)" and "fixed before" in b["valid_because"]
    assert not b["vacuous"] and b["informative"] and b["vacuous_cause"] is None


@pytest.mark.parametrize("errors,n", [(12, 1000), (3, 50), (40, 300)])
def test_test_set_bound_inverts_the_binomial_tail(errors, n):
    b = pac_bayes.test_set_bound(errors, n, delta=0.05)["bound"]
    brute = bisect(lambda p: sps.binom.cdf(errors, n, p) >= 0.05, errors / n, 1.0)
    assert b == pytest.approx(brute, abs=1e-9)
    assert b == pytest.approx(sps.beta.ppf(0.95, errors + 1, n - errors), abs=1e-9)
    # the binomial inversion is the headline because it is tighter than its Chernoff (kl) relaxation and than
    # the PAC-Bayes-kl bound at KL = 0, which pays ln(2 sqrt(n)) for a posterior it does not choose
    out = pac_bayes.test_set_bound(errors, n)
    assert b <= out["kl_inverse_bound"] + 1e-12
    assert out["kl_inverse_bound"] == pytest.approx(
        bisect(lambda p: kl_bernoulli(errors / n, p) <= math.log(1 / 0.05) / n, errors / n, 1.0), abs=1e-9)
    assert out["kl_inverse_bound"] < pac_bayes.pac_bayes_kl_bound(errors / n, n, kl=0.0)


def test_test_set_bound_vacuous_cases_and_bad_input():
    all_wrong = pac_bayes.test_set_bound(20, 20)
    assert all_wrong["bound"] == 1.0 and all_wrong["vacuous"] and not all_wrong["informative"]
    assert "every one of the n = 20" in all_wrong["vacuous_cause"]
    empty = pac_bayes.test_set_bound(0, 0)
    assert empty["bound"] == 1.0 and empty["vacuous"] and "n = 0" in empty["vacuous_cause"]
    # non-vacuous but not informative: a bound above one half says little
    half = pac_bayes.test_set_bound(6, 10)
    assert not half["vacuous"] and not half["informative"]
    with pytest.raises(ValueError):
        pac_bayes.test_set_bound(11, 10)
    with pytest.raises(ValueError):
        pac_bayes.test_set_bound(1, 10, delta=0.0)


@pytest.mark.parametrize("p,n", [(0.1, 200), (0.02, 300), (0.3, 50)])
def test_test_set_bound_covers_the_true_rate(p, n):
    """Validity: the bound is >= p with probability >= 95%, exactly (summing the binomial pmf over the counts
    whose bound covers p) and in a simulation of 400 test samples drawn from Bernoulli(p)."""
    counts = np.arange(n + 1)
    covers = np.array([pac_bayes.test_set_bound(k, n)["bound"] >= p for k in counts])
    assert sps.binom.pmf(counts, n, p)[covers].sum() >= 0.95
    draws = np.random.default_rng(0).binomial(n, p, size=400)
    assert covers[draws].mean() >= 0.95


# ------------------------------------------------------------------ Monte-Carlo-corrected PAC-Bayes

def test_mc_corrected_bound_matches_hand_computation():
    # one sigma (grid of 1), ||w - w0||^2 = 10 at sigma 1 -> KL = 5; Gibbs mean error 0.1 over m = 100 draws
    g = pac_bayes.pac_bayes_grid_bound(0.1, 1000, sq_dist=10.0, sigmas=[1.0], delta=0.05, samples=100,
                                       delta_mc=0.01)
    e_up = bisect(lambda p: kl_bernoulli(0.1, p) <= math.log(2 / 0.01) / 100, 0.1, 1.0)
    bound = bisect(lambda p: kl_bernoulli(e_up, p) <= (5.0 + math.log(2 * math.sqrt(1000) / 0.04)) / 1000, e_up, 1.0)
    assert g["gibbs_error_upper"][0] == pytest.approx(e_up, abs=1e-9)
    assert g["bound"] == pytest.approx(bound, abs=1e-9)
    assert g["kl"] == pytest.approx(5.0) and g["samples"] == 100 and g["delta_mc"] == 0.01
    assert g["uncorrected_bounds"][0] == pytest.approx(pac_bayes.pac_bayes_kl_bound(0.1, 1000, 5.0, 0.05))
    assert not g["vacuous"] and g["vacuous_cause"] is None
    # the grid splits both deltas: 3 sigmas -> delta_mc / 3 for the sample step, (delta - delta_mc) / 3 after
    g3 = pac_bayes.pac_bayes_grid_bound([0.1, 0.1, 0.1], 1000, sq_dist=10.0, sigmas=[1.0, 2.0, 4.0], samples=100)
    up3 = pac_bayes.mc_gibbs_error_upper(0.1, 100, 0.01 / 3)
    assert g3["bounds"][0] == pytest.approx(pac_bayes.pac_bayes_kl_bound(up3, 1000, 5.0, 0.04 / 3))


@pytest.mark.parametrize("err,samples,sq", [(0.0, 10, 1.0), (0.05, 2, 0.5), (0.1, 100, 10.0), (0.3, 1000, 50.0),
                                            (0.9, 5, 0.1)])
def test_mc_corrected_bound_never_below_uncorrected(err, samples, sq):
    g = pac_bayes.pac_bayes_grid_bound([err, err / 2, err], 500, sq_dist=sq, sigmas=[0.5, 1.0, 2.0], samples=samples)
    assert all(c >= u - 1e-12 for c, u in zip(g["bounds"], g["uncorrected_bounds"]))
    assert all(up >= e for up, e in zip(g["gibbs_error_upper"], [err, err / 2, err]))
    assert g["bound"] >= min(g["uncorrected_bounds"]) - 1e-12
    # without samples nothing changes: the existing behaviour (tests/test_stats.py)
    plain = pac_bayes.pac_bayes_grid_bound([err, err / 2, err], 500, sq_dist=sq, sigmas=[0.5, 1.0, 2.0])
    assert plain["bounds"] == plain["uncorrected_bounds"]


def test_sample_convergence_bound_covers_the_mean():
    """The Monte-Carlo step is valid: over 400 repetitions of m = 50 draws of per-sample errors in [0, 1] with
    mean 0.3, the upper bound at delta' = 0.05 is >= 0.3 in at least 95% of them."""
    rng = np.random.default_rng(1)
    means = rng.binomial(20, 0.3, size=(400, 50)).mean(axis=1) / 20  # each draw: an error rate on 20 items
    covered = np.mean([pac_bayes.mc_gibbs_error_upper(m, 50, 0.05) >= 0.3 for m in means])
    assert covered >= 0.95
    assert pac_bayes.mc_gibbs_error_upper(0.3, 0, 0.05) == 1.0


def test_vacuous_bound_is_flagged_with_its_cause():
    # the size of the real case: ||w - w0||^2 = 170 -> KL = 8.5e7 nats at sigma 1e-3, n = 300
    g = pac_bayes.pac_bayes_grid_bound([0.05, 0.06, 0.3], 300, sq_dist=170.0, sigmas=[1e-3, 3e-3, 1e-2], samples=2)
    assert g["bound"] >= 1 - 1e-9 and g["vacuous"] and not g["informative"]
    assert g["kls"][0] == pytest.approx(8.5e7)
    assert "KL(Q||P)" in g["vacuous_cause"] and "orders of magnitude" in g["vacuous_cause"]
    assert "n = 300" in g["vacuous_cause"]
    # with a small KL but a single posterior sample, the Monte-Carlo correction is what makes it vacuous
    mc = pac_bayes.pac_bayes_grid_bound([0.2], 300, sq_dist=1e-6, sigmas=[1.0], samples=1)
    assert mc["vacuous"] and "posterior samples" in mc["vacuous_cause"]
    # a Gibbs error near 1 with enough samples and a small KL: the error itself
    bad = pac_bayes.pac_bayes_grid_bound([0.999], 50, sq_dist=1e-6, sigmas=[1.0], samples=10 ** 6)
    assert bad["vacuous"] and "Gibbs error" in bad["vacuous_cause"]
    assert pac_bayes.is_vacuous(1.0 - 1e-15) and not pac_bayes.is_vacuous(0.999)


def test_pac_bayes_on_a_tiny_model_reports_both_bounds(tiny_model, make_record):
    """End to end on the untrained tiny model: the headline test-set bound on the deterministic errors, the
    Monte-Carlo-corrected PAC-Bayes bound, and a vacuous flag whose cause is the KL when the weights moved far."""
    import copy
    from types import SimpleNamespace

    import torch

    base, tok = tiny_model
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)  # far from the base in the prior's scale (sigma <= 1e-2)
    records = [make_record(id=f"r{i}", system="Answer briefly.", data=f"item {i}", target="yes") for i in range(12)]
    cfg = SimpleNamespace(eval=SimpleNamespace(batch_size=8), model=SimpleNamespace(max_seq_length=64),
                          run=SimpleNamespace(seed=0))
    out = pac_bayes.pac_bayes(model, base, tok, records, cfg, sigmas=(1e-3, 1e-2), samples=2)
    ts = out["test_set"]
    assert ts["n"] == 12 and ts["errors"] == round(out["deterministic_error"] * 12)
    assert ts["bound"] == pytest.approx(pac_bayes.test_set_bound(ts["errors"], 12)["bound"])
    assert out["vacuous"] and out["bound"] >= 1 - 1e-9 and "KL(Q||P)" in out["vacuous_cause"]
    # the KL alone makes it vacuous: no posterior sample is drawn, since no Gibbs error could change that
    assert out["gibbs_errors"] is None and out["samples"] == 0 and set(out["bounds_per_sigma"]) == {"0.001", "0.01"}
    near = copy.deepcopy(base)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(1e-6)  # close to the base: the Monte-Carlo Gibbs error is estimated and corrected
    out = pac_bayes.pac_bayes(near, base, tok, records, cfg, sigmas=(1e-3, 1e-2), samples=2)
    assert set(out["gibbs_errors"]) == set(out["bounds_per_sigma"]) == {"0.001", "0.01"}
    assert out["samples"] == 2 and out["delta_mc"] == 0.01 and out["kl"] == pytest.approx(min(out["kls"]))
    assert all(out["bounds_per_sigma"][s] >= out["uncorrected_bounds_per_sigma"][s] for s in out["bounds_per_sigma"])


# ------------------------------------------------------------------ KL on a LoRA (peft) model

def _lora_copy(base):
    """A peft LoRA model over a copy of `base` whose adapter moved: B set so that every adapted weight changes."""
    import copy

    import torch

    from causal_lib.config import LoraConfig, ModelConfig
    from causal_lib.models.load import apply_lora

    model = apply_lora(copy.deepcopy(base), ModelConfig(lora=LoraConfig(r=2, alpha=4, dropout=0.0)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    return model


def test_kl_under_lora_is_computed_on_the_merged_weights(tiny_model):
    """peft renames every parameter (base_model.model....base_layer.weight, lora_A/B): compared by name with the
    base, nothing matched and the KL was silently 0. The KL is now taken on the merged weights, in the base's
    names, and equals ||B A scaling||^2 summed over the adapted layers."""
    base, _ = tiny_model
    model = _lora_copy(base)
    peft_names = {n for n, _ in model.named_parameters()}
    assert not peft_names & {n for n, _ in base.named_parameters()}  # the old bug's cause: no name in common
    merged = pac_bayes.effective_model(model)
    assert {n for n, _ in merged.named_parameters()} == {n for n, _ in base.named_parameters()}
    assert any("lora_" in n for n, _ in model.named_parameters())  # the original peft model is left as it was
    shared = pac_bayes.compared_parameters(merged, base)
    assert not shared["skipped"] and shared["n_values"] == sum(p.numel() for p in base.parameters())
    expected = 0.0
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            expected += float((module.get_delta_weight("default").detach() ** 2).sum())
    assert expected > 0
    w, w0 = dict(merged.named_parameters()), dict(base.named_parameters())
    sq = pac_bayes.squared_distance([w[n] for n in shared["names"]], [w0[n] for n in shared["names"]])
    assert sq == pytest.approx(expected, rel=1e-4)


def test_pac_bayes_on_a_peft_model_charges_the_adapter(tiny_model, make_record):
    from types import SimpleNamespace

    base, tok = tiny_model
    model = _lora_copy(base)
    records = [make_record(id=f"r{i}", system="Answer briefly.", data=f"item {i}", target="yes") for i in range(6)]
    cfg = SimpleNamespace(eval=SimpleNamespace(batch_size=8), model=SimpleNamespace(max_seq_length=64),
                          run=SimpleNamespace(seed=0))
    out = pac_bayes.pac_bayes(model, base, tok, records, cfg, sigmas=(1e-3, 1e-2), samples=1)
    assert out["squared_distance"] > 0 and out["kl"] > 0 and min(out["kls"]) > 0  # never the silent 0 again
    assert out["kl_parameters"] == sum(p.numel() for p in base.parameters()) and out["kl_skipped"] == []
    # the base given as a peft model with an untouched adapter (B = 0) merges to the base itself: the same KL
    from causal_lib.config import LoraConfig, ModelConfig
    from causal_lib.models.load import apply_lora
    import copy

    base_peft = apply_lora(copy.deepcopy(base), ModelConfig(lora=LoraConfig(r=2, alpha=4, dropout=0.0)))
    again = pac_bayes.pac_bayes(model, base_peft, tok, records, cfg, sigmas=(1e-3, 1e-2), samples=1)
    assert again["squared_distance"] == pytest.approx(out["squared_distance"], rel=1e-5)


def test_no_shared_parameter_is_an_error_not_a_kl_of_zero():
    import torch

    a, b = torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="share no parameter"):
        pac_bayes.compared_parameters(a, b)
