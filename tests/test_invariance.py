"""Tests of causal_lib.stats.invariance.epsilon_causal: the mean with its bootstrap interval, the tail
quantiles with distribution-free intervals, and the share of pairs with TV > 0.5 as a rate with its interval."""
import numpy as np
import pytest
from scipy import stats as sps

from causal_lib.stats import intervals
from causal_lib.stats.invariance import epsilon_causal


def test_epsilon_causal_mean_quantiles_and_share_over_half():
    tv = np.random.default_rng(0).beta(1, 8, size=400)
    tv[:12] = np.linspace(0.55, 0.95, 12)  # a planted tail the mean hides
    out = epsilon_causal(tv, n_boot=200, seed=0)
    # the mean and its bootstrap interval, as before
    assert out["value"] == pytest.approx(tv.mean()) and out["lo"] < out["value"] < out["hi"] and out["n"] == 400
    q = out["quantiles"]
    for name, p in (("median", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert q[name]["value"] == pytest.approx(np.quantile(tv, p))
        assert 0.0 <= q[name]["lo"] <= q[name]["value"] <= q[name]["hi"] <= 1.0
    ci = sps.quantile_test(tv, q=np.quantile(tv, 0.9), p=0.9).confidence_interval(0.95)
    assert (q["p90"]["lo"], q["p90"]["hi"]) == pytest.approx((ci.low, ci.high))
    assert q["median"]["value"] < q["p90"]["value"] < q["p99"]["value"] <= q["max"] == pytest.approx(0.95)
    assert all(out[name] == q[name]["value"] for name in ("median", "p90", "p99")) and out["max"] == q["max"]
    share = out["share_tv_over_half"]
    k = int((tv > 0.5).sum())
    assert k >= 12 and share["k"] == k and share["n"] == 400 and share["rate"] == pytest.approx(k / 400)
    assert (share["lo"], share["hi"]) == pytest.approx(intervals.clopper_pearson(k, 400))


def test_epsilon_causal_small_sample_uses_tv_limits():
    # from 30 pairs the 99th percentile cannot be bounded above by the data: its upper limit is TV's own, 1
    tv = np.linspace(0.0, 0.3, 30)
    q = epsilon_causal(tv, n_boot=100)["quantiles"]
    assert q["p99"]["hi"] == 1.0 and q["p99"]["lo"] <= q["p99"]["value"]
    assert epsilon_causal(tv, n_boot=100)["share_tv_over_half"]["k"] == 0
    empty = epsilon_causal(np.array([]), n_boot=10)
    assert empty["n"] == 0 and np.isnan(empty["quantiles"]["median"]["value"]) and empty["share_tv_over_half"]["n"] == 0
