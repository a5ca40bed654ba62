"""Over-defense as a paired difference: a look-alike's error counts only against its clean twin (same S and D
without the note), so ordinary errors on the document are not over-defense (issue 17)."""
import random

import pytest

from causal_lib.evaluation.scoring import ItemResult
from causal_lib.evaluation.summary import over_defense_paired, summarise
from causal_lib.verification.intervals import paired_difference_ci, wilson
from causal_lib.verification.paired import mcnemar_exact


def _look(i, correct, twin_correct, task="t", blocked=False):
    return ItemResult(id=f"l{i}", pair_id=f"l{i}", kind="lookalike", task=task, correct=correct,
                      twin_correct=twin_correct, blocked=blocked)


def test_ordinary_errors_are_not_over_defense():
    # 10 look-alikes all wrong, but their twins are wrong too: a weak model, not a note-shy one
    look = [_look(i, False, False) for i in range(10)]
    s = summarise(look)
    assert s["over_defense"]["rate"] == 1.0  # the unpaired rate counts them all
    p = s["over_defense_paired"]
    assert p["rate"] == 0.0 and p["note_only"] == 0 and p["twin_only"] == 0 and p["p"] == 1.0
    assert p["lo"] <= 0.0 <= p["hi"]


def test_paired_counts_by_task_and_mcnemar():
    look = ([_look(i, False, True, "a") for i in range(6)] + [_look(10 + i, True, False, "a") for i in range(1)]
            + [_look(20 + i, True, True, "b") for i in range(5)] + [_look(30, False, True, "b", blocked=True)])
    s = summarise(look)["over_defense_paired"]
    assert (s["n"], s["note_only"], s["twin_only"]) == (13, 7, 1)
    assert s["rate"] == pytest.approx(6 / 13) and s["p"] == pytest.approx(mcnemar_exact(7, 1))
    assert s["lo"] < s["rate"] < s["hi"] and s["lo"] > 0  # 7 against 1: the note hurts
    a, b = s["by_task"]["a"], s["by_task"]["b"]
    assert (a["n"], a["note_only"], a["twin_only"]) == (7, 6, 1) and (b["n"], b["note_only"]) == (6, 1)


def test_lookalikes_without_twin_are_left_out():
    s = summarise([_look(0, False, None), _look(1, True, None)])
    assert "over_defense_paired" not in s and s["over_defense"]["n"] == 2
    assert over_defense_paired([_look(0, False, True)])["n"] == 1


def test_newcombe_interval_limits_and_coverage():
    d, lo, hi = paired_difference_ci(0, 0, 0, 50)
    assert d == 0.0 and lo < 0 < hi and lo >= -1 and hi <= 1
    d, lo, hi = paired_difference_ci(0, 50, 0, 0)
    assert d == 1.0 and hi == pytest.approx(1.0) and 0.8 < lo < 1.0
    d, lo, hi = paired_difference_ci(3, 10, 2, 85)
    d2, lo2, hi2 = paired_difference_ci(3, 2, 10, 85)  # swapping the arms mirrors the interval
    assert (d2, lo2, hi2) == pytest.approx((-d, -hi, -lo))
    # the pairs' correlation enters with its sign: narrower than the unpaired square-and-add interval (Newcombe's
    # method 10 for independent samples, same Wilson margins) when the two rates move together, wider when opposed
    def unpaired_width(ka, kb, n):
        (la, ua), (lb, ub), pa, pb = wilson(ka, n), wilson(kb, n), ka / n, kb / n
        return ((pa - la) ** 2 + (ub - pb) ** 2) ** 0.5 + ((ua - pa) ** 2 + (pb - lb) ** 2) ** 0.5
    _, lo, hi = paired_difference_ci(40, 4, 1, 55)  # concordant pairs: phi > 0
    assert hi - lo < 0.8 * unpaired_width(44, 41, 100)
    _, lo, hi = paired_difference_ci(0, 44, 41, 15)  # opposed pairs: phi < 0
    assert hi - lo > unpaired_width(44, 41, 100)
    # coverage of the 95% interval near the rates the book sees (a few points of over-defense), seeded
    rng, n, cells, covered, sims = random.Random(0), 150, (0.02, 0.06, 0.02, 0.90), 0, 2000
    true = cells[1] - cells[2]
    for _ in range(sims):
        counts = [0, 0, 0, 0]
        for _ in range(n):
            u, acc = rng.random(), 0.0
            for j, c in enumerate(cells):
                acc += c
                if u < acc:
                    counts[j] += 1
                    break
            else:
                counts[3] += 1
        _, lo, hi = paired_difference_ci(*counts)
        covered += lo <= true <= hi
    assert covered / sims >= 0.93
