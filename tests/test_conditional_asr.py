"""ASR on the items that hijacked the undefended base, and the deviation rate (issue 17)."""
from causal_lib.evaluation.comparison import comparison_rows, conditional_asr
from causal_lib.data.scoring import ItemResult, apply_twin_control
from causal_lib.evaluation.summary import summarise


def _ev(successes: dict) -> dict:
    items = [{"id": i, "kind": "injected", "success": ok} for i, ok in successes.items()]
    return {"items": items, "summary": summarise([ItemResult(**{**it, "pair_id": it["id"]}) for it in items])}


def test_conditional_asr_is_on_the_bases_successes():
    base = _ev({"a": True, "b": True, "c": True, "d": False})
    defended = _ev({"a": True, "b": False, "c": False, "d": True})  # d never hijacked the base: not counted
    c = conditional_asr({"none": base, "x": defended})
    assert (c["none"]["k"], c["none"]["n"]) == (3, 3) and (c["x"]["k"], c["x"]["n"]) == (1, 3)
    assert conditional_asr({"x": defended}) == {}  # no reference, no conditional rate
    row = {r["defense"]: r for r in comparison_rows({"none": base, "x": defended})}
    assert row["x"]["ASR where the base was hijacked"].startswith("33.3%")


class _Rec:
    def __init__(self, kind, pair_id, goal="output_hijack"):
        self.kind, self.pair_id, self.goal = kind, pair_id, goal


def test_deviation_counts_moves_away_from_a_correct_answer():
    recs = [_Rec("clean", "p1"), _Rec("injected", "p1"), _Rec("clean", "p2"), _Rec("injected", "p2"),
            _Rec("clean", "p3"), _Rec("injected", "p3")]
    res = [ItemResult(id="c1", pair_id="p1", kind="clean", correct=True),
           ItemResult(id="i1", pair_id="p1", kind="injected", correct=False, success=False),  # moved (not hijacked)
           ItemResult(id="c2", pair_id="p2", kind="clean", correct=True),
           ItemResult(id="i2", pair_id="p2", kind="injected", correct=True, success=False),  # held
           ItemResult(id="c3", pair_id="p3", kind="clean", correct=False),  # wrong anyway: not a deviation
           ItemResult(id="i3", pair_id="p3", kind="injected", correct=False, success=False)]
    apply_twin_control(recs, res, lambda rec, out: False)
    assert [r.twin_correct for r in res if r.kind == "injected"] == [True, True, False]
    d = summarise(res)["deviation"]
    assert (d["k"], d["n"]) == (1, 2)


def test_families_trained_on_come_from_each_checkpoint(tmp_path):
    import json
    from types import SimpleNamespace

    from causal_lib.evaluation.comparison import training_families

    paths = SimpleNamespace(checkpoints=tmp_path)
    (tmp_path / "struq" / "best_model").mkdir(parents=True)
    (tmp_path / "struq" / "best_model" / "checkpoint.json").write_text(json.dumps({"extra": {"train_families": ["naive"]}}))
    fams = training_families(paths, ["none", "struq", "causal"])  # causal: no checkpoint here, left out
    assert fams == {"struq": ["naive"]}
    base = _ev({"a": True})
    rows = {r["defense"]: r for r in comparison_rows({"none": base, "struq": base}, trained_on=fams)}
    assert rows["StruQ"]["attack families trained on"] == "naive" and rows["no defense"]["attack families trained on"] == "none"
