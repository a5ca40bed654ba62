"""The training contract's selection rule (training.selection): one score for every defense, each item weighing
the same, in the defense's own view of the prompt."""
import math

import pytest

from causal_lib.config import config_from_dict
from causal_lib.training import selection

CFG = config_from_dict({"model": {"max_seq_length": 64}, "eval": {"batch_size": 3}})


def _items(make_record, kind, targets):
    return [make_record(id=f"{kind}{i}", pair_id=f"p{i}", kind=kind, system="Say the first word.",
                        data="apple pear plum", target=t) for i, t in enumerate(targets)]


def test_item_losses_weigh_each_item_the_same(tiny_model, make_record):
    model, tok = tiny_model
    short = _items(make_record, "clean", ["apple"])
    long = _items(make_record, "clean", ["pear plum apple pear plum apple pear plum apple pear plum"])
    one, many = selection.item_losses(model, tok, short, CFG)[0], selection.item_losses(model, tok, long, CFG)[0]
    both = selection.item_losses(model, tok, short + long, CFG)  # batched together: the same values, in order
    assert both == pytest.approx([one, many], rel=1e-5)
    # the rule's mean is over items; the token mean would sit next to the long item's loss
    res = selection.validation_loss(model, tok, short, long, CFG)
    assert res["val_loss"] == pytest.approx((one + many) / 2, rel=1e-5) and res["val_items"] == 2
    token_mean = selection.mean_task_loss(model, tok, short + long, CFG)
    assert abs(token_mean - many) < abs(res["val_loss"] - many)


def test_score_reads_clean_and_injected_items_through_the_defenses_view(tiny_model, make_record):
    model, tok = tiny_model
    val = _items(make_record, "clean", ["apple", "pear"]) + _items(make_record, "injected", ["plum"]) + \
        _items(make_record, "sep_probe", ["x"])
    seen = []

    def view(rs):
        seen.append([r.kind for r in rs])
        return rs

    score = selection.validation_score_fn(CFG, val, tok, view)
    out = score(model)
    assert seen == [["clean", "clean"], ["injected"]]  # other kinds are not scored
    assert out["val_items"] == 3 and math.isfinite(out[selection.SELECT_BY])
    assert selection.validation_score_fn(CFG, [], tok) is None


def test_every_trained_defense_selects_by_the_rule():
    import inspect

    from causal_lib.defenses import causal, secalign, struq

    for mod in (causal, struq, secalign):
        src = inspect.getsource(mod.train)
        assert "select_by=selection.SELECT_BY" in src and "higher_is_better=False" in src, mod.__name__
        assert "causal_stability\"" not in src.split("select_by")[1][:40]
