"""The ablation table of chapter 08 (issue 32, item 4): every row of the causal method against adversarial SFT on
the same items, beside the matched baselines; a planted difference is found, an absent one is not."""
from causal_lib.book.report_text import ablation_text, comparison_table_report
from causal_lib.evaluation.ablation import ablation, ablation_models, ablation_rows
from causal_lib.evaluation.adaptive import adaptive_union, union_outcomes

N = 200


def _rate(k, n):
    return {"k": k, "n": n, "rate": k / n, "lo": max(k / n - 0.05, 0), "hi": min(k / n + 0.05, 1)}


def _evaluation(hijacked: int, correct: int, twin_passed=()):
    """N attacked items (the first `hijacked` succeed), N clean items (the first `correct` right), 10 probe pairs."""
    items = [{"id": f"a{i}", "kind": "injected", "success": i < hijacked, "twin_passed": f"a{i}" in twin_passed}
             for i in range(N)]
    items += [{"id": f"c{i}", "kind": "clean", "correct": i < correct} for i in range(N)]
    items += [{"id": f"s{i}", "pair_id": f"p{i}", "kind": "probe_system", "success": True} for i in range(10)]
    items += [{"id": f"u{i}", "pair_id": f"p{i}", "kind": "probe_data", "success": i < 2} for i in range(10)]
    summary = {"asr": _rate(hijacked, N), "benign_accuracy": _rate(correct, N),
               "asr_by_axis": {"phrasing": {"held_out": _rate(hijacked // 2, N // 2)}}}
    return {"summary": summary, "items": items}


def _gcg(broken: int, n: int = 50, twin_passed=()):
    return {"items": [{"id": f"a{i}", "success": i < broken and f"a{i}" not in twin_passed,
                       "twin_passed": f"a{i}" in twin_passed} for i in range(n)]}


EVALS = {"none": _evaluation(150, 160), "struq": _evaluation(10, 150), "causal": _evaluation(5, 158),
         "causal_sft": _evaluation(40, 158, twin_passed=("a0",)), "causal_invariance": _evaluation(40, 158)}


def test_rows_are_the_base_baselines_then_each_control_with_the_rows_that_name_it():
    assert ablation_models(list(EVALS)) == ["none", "struq", "causal_sft", "causal", "causal_invariance"]
    assert ablation_models(["none", "struq", "causal"]) == []  # no control: no table
    # the task-grouped row is compared with adversarial SFT on the same batches, not with causal_sft
    both = ["none", "causal", "causal_sft", "causal_by_task", "causal_sft_by_task"]
    assert ablation_models(both) == ["none", "causal_sft", "causal", "causal_sft_by_task", "causal_by_task"]
    evals = {**EVALS, "causal_by_task": _evaluation(5, 158), "causal_sft_by_task": _evaluation(6, 158)}
    res = ablation(evals)
    assert res["controls"] == {"causal": "causal_sft", "causal_invariance": "causal_sft",
                               "causal_by_task": "causal_sft_by_task"}
    by_task = res["against_control"]["causal_by_task"]["static ASR"]
    assert (by_task["a_only"], by_task["b_only"]) == (0, 1) and not by_task["significant"]
    rows = {r["model"]: r for r in ablation_rows(res)}
    assert rows["causal, task-grouped batches"]["compared with"] == "adversarial SFT, task-grouped batches"
    assert rows["adversarial SFT, task-grouped batches"]["compared with"] == "control"
    # a row whose control was not run says so, and is not compared with another control
    lone = ablation({d: evals[d] for d in ("none", "causal", "causal_sft", "causal_by_task")})
    assert "causal_by_task" not in lone["against_control"]
    assert ablation_rows(lone)[-1]["compared with"] == "adversarial SFT, task-grouped batches (not run)"


def test_a_planted_difference_against_the_control_is_established_and_an_absent_one_is_not():
    adaptive = {"gcg": {"causal": _gcg(5), "causal_sft": _gcg(30), "none": _gcg(45)},
                "random_search": {"causal": _gcg(8), "causal_sft": _gcg(10)},
                "template_completion_budget_items": {}}
    adaptive["union"] = {d: adaptive_union(g, {"random search": adaptive["random_search"].get(d)})
                         for d, g in adaptive["gcg"].items()}
    res = ablation(EVALS, adaptive)
    static = res["against_control"]["causal"]["static ASR"]
    # the joint twin control drops a0 (its clean twin passes under the control): 199 items, 35 discordant
    assert static["n"] == N - 1 and static["dropped"] == 1 and (static["a_only"], static["b_only"]) == (0, 35)
    assert static["significant"] and static["rate"] < 0 and static["hi"] < 0
    same = res["against_control"]["causal_invariance"]["static ASR"]
    assert same["a_only"] == same["b_only"] == 0 and not same["significant"]
    adap = res["against_control"]["causal"]["adaptive ASR"]
    # per item any of GCG and random search: causal 8 broken, the control 30, on the same 50 items
    assert (adap["n"], adap["a_only"], adap["b_only"]) == (50, 0, 22) and adap["significant"]
    assert union_outcomes(adaptive, "causal") == ({f"a{i}": i < 8 for i in range(50)}, set())
    # an item whose clean twin passes under one model's attack is dropped for both (joint twin control)
    adaptive["random_search"]["causal_sft"] = _gcg(10, twin_passed=("a3",))
    adap = ablation(EVALS, adaptive)["against_control"]["causal"]["adaptive ASR"]
    assert (adap["n"], adap["dropped"], adap["b_only"]) == (49, 1, 22)  # a3 was broken under both: concordant
    assert "adaptive ASR" not in res["against_control"]["causal_invariance"]  # not attacked: not tested, not 0
    assert res["against_control"]["causal"]["benign accuracy"]["n"] == N
    assert res["rates"]["causal"]["S-utility"]["rate"] == 1.0
    # the field's corpora, per attack file (data.attack_files), when the run has them
    with_corpus = {d: {**ev, "summary": {**ev["summary"], "asr_by_source": {"builtin": _rate(1, 2),
                                                                            "spikee.jsonl": _rate(3, 40)}}}
                   for d, ev in EVALS.items()}
    rates = ablation(with_corpus)["rates"]["causal"]
    assert rates["corpus spikee.jsonl ASR"]["k"] == 3 and "corpus builtin ASR" not in rates


def test_rows_and_report_name_the_control_and_say_when_there_is_none():
    rows = ablation_rows(ablation(EVALS))
    assert [r["model"] for r in rows][2].startswith("adversarial SFT")
    assert rows[2]["static ASR minus its control"] == "control" and rows[0]["static ASR minus its control"] == "-"
    assert rows[3]["static ASR minus its control"].startswith("-17.6 pt [")
    assert rows[3]["compared with"] == "adversarial SFT (causal, both weights 0)"
    assert rows[3]["adaptive ASR minus its control"] == "n/a"  # not attacked: not tested
    assert all(r.keys() == rows[0].keys() for r in rows)  # every column in every row (markdown takes row 0's)
    text = comparison_table_report([{"defense": "x"}], 0, ablation_rows=rows)
    assert "## Ablations: what the causal terms add beyond adversarial SFT" in text
    assert "Not run: no row of the causal method has its control" in ablation_text([])
