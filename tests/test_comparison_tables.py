"""Chapter 08 at a glance (issue 31, item 8): the comparison in page-sized tables, the answer in one paragraph, and
a verdict that fails when a baseline does significantly better on the same items."""
from causal_lib.core import criteria
from causal_lib.book.report_text import attack_detail, comparison_table_report, lead_paragraph
from causal_lib.evaluation.comparison import COLUMN_GROUPS, comparison_tables, paired_verdict, worse_than


def _pair(a, b, ra, rb, sig, p=0.001):
    return {"a": a, "b": b, "label_a": a.upper(), "label_b": b.upper(), "rate_a": ra, "rate_b": rb, "n": 300,
            "significant": sig, "p_holm": p}


PAIRED = {"pairs": [_pair("none", "causal", 0.7, 0.05, True), _pair("causal", "struq", 0.05, 0.01, True, 0.004),
                    _pair("causal", "causal_sft", 0.05, 0.04, False, 0.8), _pair("struq", "secalign", 0.01, 0.02, False)]}


def _rate(r):
    return {"k": int(r * 100), "n": 100, "rate": r, "lo": max(r - 0.03, 0), "hi": r + 0.03}


def test_tables_split_every_column_and_lose_none():
    cols = [c for cols in COLUMN_GROUPS.values() for c in cols]
    rows = [{"defense": d, **{c: f"{d}:{c}" for c in cols}, "a new column": "x"} for d in ("none", "causal")]
    tables = comparison_tables(rows)
    assert [t for t, _ in tables] == list(COLUMN_GROUPS)
    seen = [c for _, t in tables for c in t[0] if c != "defense"]
    assert sorted(seen) == sorted(cols + ["a new column"]) and all(len(t[0]) <= 11 for _, t in tables)
    assert all(t[1]["defense"] == "causal" for _, t in tables)
    text = comparison_table_report(rows, 0, tables=tables, lead="**In one paragraph.** x\n\n")
    assert text.index("In one paragraph") < text.index("### Attack success") and text.count("\n### ") == len(tables)


def test_the_verdict_fails_when_a_baseline_is_significantly_better():
    worse = worse_than(PAIRED, "causal", ["struq", "secalign", "causal_sft"])
    assert [w["other"] for w in worse] == ["struq"] and worse[0]["rate_model"] == 0.05
    assert paired_verdict(criteria.PASS, PAIRED, among=["struq", "causal_sft"]) == (criteria.FAIL, worse)
    # better than the base, not significantly different from the control: the threshold's verdict stands
    assert paired_verdict(criteria.PASS, PAIRED, among=["causal_sft"]) == (criteria.PASS, [])
    assert paired_verdict(criteria.INCONCLUSIVE, None) == (criteria.INCONCLUSIVE, [])
    line = attack_detail({"asr": _rate(0.05)}, {"asr": _rate(0.7)}, worse)
    assert "FAIL: significantly worse than STRUQ (5.0% vs 1.0%" in line


def test_lead_paragraph_answers_first_and_names_the_control():
    summaries = {d: {"asr": _rate(r), "benign_accuracy": _rate(0.95)}
                 for d, r in (("none", 0.7), ("causal", 0.05), ("causal_sft", 0.04), ("struq", 0.01))}
    text = lead_paragraph(summaries, {"struq": "StruQ", "causal": "causal (ours)"}, PAIRED)
    assert "lowest ASR is StruQ's (1.0%" in text
    assert "causal_sft (the control: adversarial SFT on the same pairs): 5.0% vs 4.0% on 300 common items, no " \
           "difference detected" in text
    assert "StruQ: 5.0% vs 1.0% on 300 common items, significantly higher" in text
    assert "One training seed" in text
    assert "across-seed test below" in lead_paragraph(summaries, {}, PAIRED, seeds=3)
    assert lead_paragraph({"none": summaries["none"]}, {}, PAIRED) == ""


def test_comparison_rows_carry_sep_on_the_base_probes_and_s_utility():
    from causal_lib.evaluation.comparison import comparison_rows

    def ev(s_exec, u_exec):
        items = [{"id": f"s{k}", "pair_id": f"p{k}", "kind": "probe_system", "success": v} for k, v in enumerate(s_exec)]
        items += [{"id": f"u{k}", "pair_id": f"p{k}", "kind": "probe_data", "success": v} for k, v in enumerate(u_exec)]
        summ = {k: _rate(0.5) for k in ("asr", "benign_accuracy", "over_defense", "sep")}
        return {"summary": summ, "items": items}

    base = ev([True, True, True, False], [True, True, False, False])  # the base executes probes 0-2 in S
    defended = ev([True, False, False, True], [False, False, False, False])  # keeps one of them in S, none in U
    rows = {r["defense"]: r for r in comparison_rows({"none": base, "causal": defended})}
    row = rows["causal (ours)"]
    assert row["SEP on the base's probes"].startswith("100.0%") and row["S-utility (probes still executed in S)"].startswith("33.3%")
    assert rows["no defense"]["S-utility (probes still executed in S)"].startswith("100.0% [29.2%, 100.0%] (n=3)")


def test_the_completion_report_leads_with_chapter_08s_answer(tmp_path):
    import json

    from causal_lib.book.phase_report import comparison_lead
    from causal_lib.book.report_text import phase2_completion_report
    from causal_lib.core.run_folder import RunPaths

    paths = RunPaths(tmp_path / "run").make()
    assert comparison_lead(paths) == ""
    summaries = {d: {"asr": _rate(r), "benign_accuracy": _rate(0.95)} for d, r in (("none", 0.7), ("causal", 0.05),
                                                                                     ("struq", 0.01))}
    (paths.metrics / "comparison.json").write_text(json.dumps({"summaries": summaries, "paired": PAIRED}))
    lead = comparison_lead(paths)
    assert lead.startswith("**In one paragraph.**") and "StruQ: 5.0% vs 1.0%" in lead
    text = phase2_completion_report("run", "h", 0, "NOT MET", [], {}, lead=lead)
    assert text.index("In one paragraph") < text.index("**Status: NOT MET**")


def test_chapter_09s_asr_row_fails_when_a_baseline_is_significantly_better(tmp_path):
    import json

    from causal_lib.book.phase_report import success_criteria
    from causal_lib.core.run_folder import RunPaths

    paths = RunPaths(tmp_path / "run").make()
    summaries = {d: {"asr": {"k": int(r * 300), "n": 300, "rate": r, "lo": max(r - 0.01, 0), "hi": r + 0.01},
                     "benign_accuracy": _rate(0.95)} for d, r in (("none", 0.7), ("causal", 0.03), ("struq", 0.01))}
    (paths.metrics / "comparison.json").write_text(json.dumps({"summaries": summaries, "paired": PAIRED}))
    asr = next(r for r in success_criteria(paths) if r["criterion"] == criteria.get("asr").name)
    assert asr["status"] == criteria.FAIL and "significantly worse than STRUQ" in asr["measured"]
