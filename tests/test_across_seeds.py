"""The across-seed paired test (stats.paired.across_seeds): items and training seeds both vary."""
import numpy as np

from causal_lib.stats.paired import across_seeds, seed_grid


def _grid(rates, n=300, seed=0):
    rng = np.random.default_rng(seed)
    return {s: {f"i{k}": bool(rng.random() < r) for k in range(n)} for s, r in rates.items()}


def test_a_real_difference_is_found_and_no_difference_is_not_claimed():
    a = _grid({0: 0.30, 1: 0.32, 2: 0.28}, seed=1)
    b = _grid({0: 0.05, 1: 0.06, 2: 0.04}, seed=2)
    r = across_seeds("a", a, "b", b)
    assert r["significant"] and r["lo"] > 0.15 and r["p_sign_flip"] < 0.01 and r["n_items"] == 300
    assert [p["seed"] for p in r["per_seed"]] == [0, 1, 2] and all(p["p_value"] < 1e-6 for p in r["per_seed"])
    same = across_seeds("a", _grid({0: 0.2, 1: 0.2, 2: 0.2}, seed=3), "b", _grid({0: 0.2, 1: 0.2, 2: 0.2}, seed=4))
    assert not same["significant"] and same["lo"] < 0 < same["hi"]


def test_seed_variation_widens_the_interval():
    """B beats A on seed 0 alone and is equal on the others: each seed's McNemar can be significant while the
    difference over seeds is not established; the two-way interval is wider than the items-only one."""
    a = _grid({0: 0.3, 1: 0.3, 2: 0.3}, seed=5)
    b = {0: {i: False for i in a[0]}, 1: dict(a[1]), 2: dict(a[2])}
    two_way = across_seeds("a", a, "b", b)
    one_seed = across_seeds("a", {0: a[0]}, "b", {0: b[0]})
    assert one_seed["significant"] and not one_seed["seed_variation"]
    assert two_way["per_seed"][0]["p_value"] < 1e-10 and two_way["per_seed"][1]["a_only"] == 0
    assert (two_way["hi"] - two_way["lo"]) > (one_seed["hi"] - one_seed["lo"])
    assert not two_way["significant"]


def test_grid_keeps_items_every_seed_scored_minus_the_twin_control():
    a = {0: {"x": True, "y": False, "z": True}, 1: {"x": True, "y": True}}
    b = {0: {"x": False, "y": False, "z": False}, 1: {"x": False, "y": True}}
    seeds, ids, ga, gb = seed_grid(a, b, ineligible={1: {"y"}})
    assert seeds == [0, 1] and ids == ["x"] and ga.tolist() == [[True], [True]] and gb.tolist() == [[False], [False]]
    empty = across_seeds("a", {0: {}}, "b", {0: {}})
    assert empty["n_items"] == 0 and not empty["significant"]


def test_seed_paired_reads_every_replicas_items(tmp_path):
    import json

    from causal_lib.book.report_text import comparison_table_report
    from causal_lib.core.run_folder import RunPaths
    from causal_lib.evaluation.comparison import seed_paired, seed_paired_rows

    def items(success, twin=()):
        return [{"id": f"i{k}", "kind": "injected", "success": bool(v), "twin_passed": k in twin}
                for k, v in enumerate(success)]

    paths = RunPaths(tmp_path / "run").make()
    rng = np.random.default_rng(0)
    main = {"none": {"items": items(rng.random(200) < 0.7)}, "causal": {"items": items(rng.random(200) < 0.1, twin={3})}}
    for s in (1, 2):
        rep = paths.replica(s).make()
        for d, rate in (("none", 0.7), ("causal", 0.1)):
            (rep.metrics / f"eval_{d}_items.jsonl").write_text(
                "\n".join(json.dumps(i) for i in items(rng.random(200) < rate)))
    (r,) = seed_paired(paths, 0, main, [1, 2])
    assert r["seeds"] == [0, 1, 2] and r["n_items"] == 199  # item 3 dropped: its twin passed under causal on seed 0
    assert r["significant"] and r["lo"] > 0.4 and r["label_b"] == "causal (ours)"
    rows = seed_paired_rows([r])
    assert rows[0]["difference established"] == "yes" and rows[0]["per seed (A only / B only, McNemar p)"].count(":") == 3
    text = comparison_table_report([{"defense": "x"}], 0, [{"defense": "x"}], [0, 1, 2], seed_paired_rows=rows)
    assert "Differences over seeds and items" in text and "two-way cluster bootstrap" in text
