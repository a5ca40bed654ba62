"""Several attacks per clean test item (issue 17): the per-sample union ("any attack succeeds") then differs from
the mean ASR, every variant is twin-controlled against the one clean item, and nothing else is generated
differently (training data, validation and the shipped base's recipe hash are unchanged)."""
from collections import Counter

from causal_lib.config import config_from_dict
from causal_lib.data import build as data
from causal_lib.data.scoring import ItemResult
from causal_lib.evaluation.summary import summarise
from causal_lib.training import shipped_base

SMALL = {"run.seed": 3, "data.n_base_corpus": 300, "data.n_train": 60, "data.n_val": 20, "data.n_test": 60,
         "data.n_benign_lookalikes": 10, "data.n_sep_probes": 10}


def test_k_variants_per_clean_item_and_nothing_else_changes():
    one = data.build_dataset(config_from_dict({}, SMALL))
    three = data.build_dataset(config_from_dict({}, {**SMALL, "data.attacks_per_clean": 3}))
    for split in ("train", "val", "base_corpus"):
        assert [r.to_dict() for r in one[split]] == [r.to_dict() for r in three[split]], split
    inj = [r for r in three["test"] if r.kind == "injected"]
    clean = {r.pair_id: r for r in three["test"] if r.kind == "clean"}
    per = Counter(r.pair_id for r in inj)
    assert len(clean) == 60 and set(per.values()) == {3} and set(per) == set(clean)
    assert len({r.id for r in inj}) == len(inj)
    for r in inj:  # every variant is an attack on its clean twin's S and D
        c = clean[r.pair_id]
        assert (r.system, r.clean_data, r.target) == (c.system, c.clean_data, c.target)
    # variants differ in family, goal or position: a real worst case over attacks, not three copies
    assert sum(len({(r.family, r.goal, r.position) for r in inj if r.pair_id == p}) == 3 for p in clean) > 40
    assert {r.pair_id for r in one["test"] if r.kind == "clean"} == set(clean)  # the same clean items
    assert data.data_hash(config_from_dict({}, SMALL)) != data.data_hash(config_from_dict({}, {**SMALL, "data.attacks_per_clean": 3}))


def test_union_differs_from_mean_and_recipe_hash_ignores_it():
    res = []
    for i in range(4):  # item i: i of its 3 variants succeed
        res += [ItemResult(id=f"c{i}-{j}", pair_id=f"p{i}", kind="injected", item_key=f"k{i}", success=j < i)
                for j in range(3)]
    s = summarise(res)
    assert s["asr"]["k"] == 0 + 1 + 2 + 3 and s["asr"]["n"] == 12
    assert s["asr_union"]["k"] == 3 and s["asr_union"]["n"] == 4 and s["asr_union_variants_per_item"] == 3
    base = config_from_dict({}, SMALL)
    assert shipped_base.recipe_hash(base) == shipped_base.recipe_hash(config_from_dict({}, {**SMALL, "data.attacks_per_clean": 3}))
