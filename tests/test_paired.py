"""Paired comparisons: exact McNemar on discordant pairs, Holm correction, detectable difference."""
import numpy as np
import pytest
from scipy import stats

from causal_lib.stats import paired
def test_mcnemar_matches_scipy_binomial_test_on_discordant_pairs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.random(300) < 0.2
        y = rng.random(300) < 0.1
        r = paired.compare_pair("a", dict(enumerate(x)), "b", dict(enumerate(y)))
        b, c = int((x & ~y).sum()), int((~x & y).sum())
        assert (r.a_only, r.b_only) == (b, c)
        assert r.p_value == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
    assert paired.mcnemar_exact(0, 0) == 1.0


def test_only_common_items_are_paired():
    r = paired.compare_pair("a", {1: True, 2: False, 3: True}, "b", {2: True, 3: True, 4: False})
    assert r.n == 2 and r.a_only == 0 and r.b_only == 1


def test_holm_adjustment():
    p = [0.01, 0.04, 0.03, 0.5]
    adj = paired.holm(p)
    assert adj == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert all(a >= q for a, q in zip(adj, p))


def test_pairwise_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    n = 600
    base = rng.random(n) < 0.4
    same = base.copy()  # 10 successes lost and 10 gained: discordant both ways, no systematic difference
    same[rng.choice(np.flatnonzero(base), 10, replace=False)] = False
    same[rng.choice(np.flatnonzero(~base), 10, replace=False)] = True
    better = base & (rng.random(n) < 0.2)  # succeeds on a fifth of the base's successes
    res = {(r.a, r.b): r for r in paired.pairwise({"base": dict(enumerate(base)), "same": dict(enumerate(same)),
                                                   "better": dict(enumerate(better))})}
    assert res[("base", "better")].significant
    assert not res[("base", "same")].significant
    assert "no difference detected" in paired.sentence(res[("base", "same")], mdd=0.05)
    assert "significant" in paired.sentence(res[("base", "better")])


def test_minimum_detectable_difference_shrinks_with_n():
    d_small = paired.minimum_detectable_difference(200, 0.05)
    d_large = paired.minimum_detectable_difference(2000, 0.05)
    assert 0 < d_large < d_small < 0.1
    assert np.isnan(paired.minimum_detectable_difference(10, 0.1))  # one discordant item: nothing detectable


def test_paired_comparison_of_evaluations_and_its_report():
    from causal_lib.book.report_text import comparison_table_report
    from causal_lib.evaluation.comparison import paired_comparison

    rng = np.random.default_rng(2)
    base = rng.random(400) < 0.5

    def ev(success):
        return {"items": [{"id": f"i{j}", "kind": "injected", "success": bool(s)} for j, s in enumerate(success)]
                + [{"id": "c0", "kind": "clean", "correct": True}]}

    res = paired_comparison({"none": ev(base), "causal": ev(base & (rng.random(400) < 0.1)), "struq": ev(base)})
    by = {(p["a"], p["b"]): p for p in res["pairs"]}
    assert by[("none", "causal")]["significant"] and by[("none", "causal")]["n"] == 400
    assert not by[("none", "struq")]["significant"] and by[("none", "struq")]["p_value"] == 1.0
    text = comparison_table_report([{"defense": "x"}], 0, paired_result=res)
    assert "exact McNemar" in text and "Holm" in text and "no difference detected" in text
    assert "causal (ours)" in text and "no defense" in text


def test_joint_twin_control_changes_the_answer_and_counts_the_drops():
    """Planted: on 30 items model A's clean twin already prints the payload (twin control discounts them for A,
    so A's outcome there is 'failed'), while B is hijacked on them. Per-model eligibility pairs those 30 items
    as 30 discordant wins for A (significant); jointly they are dropped, and A and B do not differ."""
    rng = np.random.default_rng(3)
    n = 200
    common = rng.random(n) < 0.3  # both hijacked on the same items outside the planted block
    a = {f"i{j}": bool(common[j]) for j in range(n)}
    b = dict(a)
    planted = [f"i{j}" for j in range(n) if not common[j]][:30]
    for i in planted:
        a[i], b[i] = False, True  # A's "failure" is only its twin control; B carried the attack out
    per_model = paired.compare_pair("A", a, "B", b)
    joint = paired.compare_pair("A", a, "B", b, ineligible_a=set(planted), ineligible_b=set())
    assert per_model.n == n and per_model.b_only == 30 and per_model.p_value < 0.001 and per_model.dropped is None
    assert joint.n == n - 30 and joint.dropped == 30 and joint.a_only == joint.b_only == 0 and joint.p_value == 1.0
    assert joint.rate_a == joint.rate_b  # the same denominators: the same rate
    # an item dropped under B only is dropped for the pair too (eligibility is joint, not per model)
    both = paired.compare_pair("A", a, "B", b, ineligible_a=set(), ineligible_b={"i0", "i1"})
    assert both.dropped == 2 and both.n == n - 2
    res = paired.pairwise({"A": a, "B": b, "C": b}, ineligible={"A": set(planted), "B": set(), "C": set()})
    by = {(r.a, r.b): r for r in res}
    assert not by[("A", "B")].significant and by[("A", "B")].dropped == 30 and by[("B", "C")].dropped == 0
    assert "30 dropped" in paired.sentence(by[("A", "B")]) and "eligible under both" in paired.sentence(by[("A", "B")])


def test_paired_comparison_applies_the_twin_control_jointly():
    from causal_lib.book.report_text import comparison_table_report
    from causal_lib.evaluation.comparison import paired_comparison

    def ev(success, twin):
        return {"items": [{"id": f"i{j}", "kind": "injected", "success": bool(s) and not t, "twin_passed": bool(t)}
                          for j, (s, t) in enumerate(zip(success, twin))]}

    n = 120
    hijacked = [j % 3 == 0 for j in range(n)]
    twin_a = [j < 25 for j in range(n)]  # A's clean answers already pass the check on 25 items
    res = paired_comparison({"struq": ev([True] * 25 + hijacked[25:], twin_a),
                             "causal": ev([True] * 25 + hijacked[25:], [False] * n)})
    (p,) = res["pairs"]
    assert p["dropped"] == 25 and p["n"] == n - 25 and p["a_only"] == p["b_only"] == 0
    assert "joint" in res["eligibility"]
    text = comparison_table_report([{"defense": "x"}], 0, paired_result=res)
    assert "neither model's clean twin" in text and "25 dropped" in text
