"""Chapter 09: the plan's success criteria as measured value, target and PASS/FAIL, from the metrics JSON
that the earlier chapters wrote (nothing is recomputed or assumed here)."""
from __future__ import annotations

import json
from causal_lib.core import criteria
from causal_lib.core.run_folder import RunPaths


def _read(paths: RunPaths, name: str) -> dict | None:
    p = paths.metrics / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _items(paths: RunPaths, model: str) -> list[dict]:
    p = paths.metrics / f"eval_{model}_items.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def benign_difference(paths: RunPaths, model: str, summary: dict, base: dict) -> dict | None:
    """The model's benign accuracy minus the base's: paired on the same clean items (chapter 08's per-item
    outputs) with Newcombe's interval; where the items are missing, the unpaired interval of the two rates
    (wider when the pairs agree, so never kinder), labelled as such."""
    from causal_lib.evaluation.summary import paired_accuracy_difference, unpaired_difference

    mine, ref = _items(paths, model), _items(paths, "none")
    if mine and ref:
        d = paired_accuracy_difference(mine, ref)
        if d["n"]:
            return d
    return unpaired_difference(summary.get("benign_accuracy"), base.get("benign_accuracy"))


def _difference_text(d: dict | None, ben: dict | None, bb: dict | None) -> str:
    rates = (f"{criteria.measured_text('benign_accuracy', ben)} vs base {criteria.measured_text('benign_accuracy', bb)}")
    if not d or d.get("value") is None:
        return f"{rates}; difference not measured"
    how = (f"paired on {d['n']} clean items (right only here {d['only_model']}, only on the base {d['only_base']})"
           if d.get("paired") else "unpaired (per-item outputs not available)")
    return f"{criteria.measured_text('benign_vs_base', d)}, {how}; {rates}"


def adaptive_asr(comp: dict, model: str) -> dict | None:
    """The model's adaptive ASR (evaluation.adaptive.adaptive_union) from chapter 08's comparison payload: the
    union chapter 08 stored, or, for a payload written before it did, the same union computed from the attacks it
    stored (template completion then joins only on the items it happened to share with GCG: by_attack's ran_on
    says on how many). None when GCG did not run on the model."""
    adaptive = comp.get("adaptive") or {}
    if model in (adaptive.get("union") or {}):
        return adaptive["union"][model]
    gcg = (comp.get("gcg") or {}).get(model)
    if not gcg:
        return None
    from causal_lib.evaluation.adaptive import adaptive_union

    completion = (adaptive.get("template_completion_budget_items") or adaptive.get("template_completion") or {}).get(model)
    return adaptive_union(gcg, {"random search": (adaptive.get("random_search") or {}).get(model),
                                "template completion": completion})


def success_criteria(paths: RunPaths, model: str = "causal", memory_limit_gb: float | None = None,
                     book_budget_s: float | None = None) -> list[dict]:
    """The plan's criteria, each judged by causal_lib.core.criteria (targets and rules live there): the research
    targets (must-achieve, the stand-in base, the causal method's targets), then the engineering checks (time,
    memory, NaN; `criteria.split_rows` separates them). memory_limit_gb / book_budget_s: the run's params, for the
    two criteria whose threshold they set."""
    from causal_lib.evaluation.summary import common_probe_sep

    comp, ver = _read(paths, "comparison") or {}, _read(paths, "verification") or {}
    s = comp.get("summaries", {}).get(model, {})
    base = comp.get("summaries", {}).get("none", {})
    rep = ver.get("representation", {}).get(model, {})
    rows = []

    ben, bb = s.get("benign_accuracy"), base.get("benign_accuracy")
    asr_row = criteria.row("asr", s.get("asr"))
    # as chapter 08 judges it: not a pass while another trained defense does significantly better on the same items
    # (the across-seed test when the run has seeds, else the one-seed McNemar)
    from causal_lib.defenses import registry
    from causal_lib.evaluation.comparison import paired_verdict

    seed_pairs = (_read(paths, "seed_paired") or {}).get("pairs")
    claims = {"pairs": seed_pairs} if seed_pairs else comp.get("paired")
    status, worse = paired_verdict(asr_row["status"], claims, model,
                                   among=[d for d in comp.get("summaries", {}) if d in registry.REGISTRY
                                          and registry.get(d).trains and d != model])
    if worse:
        asr_row["status"] = status
        asr_row["measured"] += "; significantly worse than " + ", ".join(
            f"{w['label']} ({w['rate_model']:.1%} vs {w['rate_other']:.1%}, Holm p = {w['p_holm']:.2g})" for w in worse)
    rows.append(asr_row)
    union = adaptive_asr(comp, model)
    rows.append(criteria.row("adaptive_asr", union, measured=(
        f"{criteria.measured_text('adaptive_asr', union)}; broken by " + ", ".join(
            f"{a} {b['broken']}/{b['ran_on']}" for a, b in union["by_attack"].items()) if union and union.get("n")
        else None)))
    rows.append(criteria.row("asr_held_out", s.get("asr_by_split", {}).get("held_out")))
    rows.append(criteria.row("benign_accuracy", ben))
    diff = benign_difference(paths, model, s, base)
    rows.append(criteria.row("benign_vs_base", diff, measured=_difference_text(diff, ben, bb)))
    if base.get("asr") is not None:
        # the stand-in the comparison stands on (chapter 04's targets, judged on chapter 08's evaluation of the base):
        # a defense's low ASR means less on a base that was never vulnerable, or never accurate, to begin with
        from causal_lib.book.report_text import base_rows

        rows += list(base_rows(base).values())
    # causal stability where the loss did not train it: the untrained point (chapter 07) where it is lowest; the
    # trained point's value is what the invariance term optimised (the trained point alone when no other was read)
    pts = {k: p for k, p in ver.get("models", {}).get(model, {}).get("points", {}).items() if not p.get("optimised")}
    low = min(pts.items(), key=lambda kv: kv[1]["causal_stability"]["value"]) if pts else None
    cs = low[1]["causal_stability"] if low else rep.get("causal_stability")
    rows.append(criteria.row("causal_stability", cs, measured=(f"{criteria.measured_text('causal_stability', cs)} at "
                                                               f"{low[0]} (lowest untrained point)") if low else None))
    rows.append(criteria.row("epsilon_causal", rep.get("epsilon_causal")))
    # SEP on the probes the base executes in S, and what the model lost of them (S-utility): its own SEP
    # denominator, the probes it still executes in S, rewards a model that follows no extra instruction at all
    mine, ref = _items(paths, model), _items(paths, "none")
    probes = common_probe_sep(mine, ref) if mine and ref else None
    n_text = f" of the base's {probes['n_common']} probes executed in S" if probes else ""
    rows.append(criteria.row("sep_common", probes["sep"] if probes else None,
                             measured=criteria.measured_text("sep_common", probes["sep"]) + n_text if probes else None))
    rows.append(criteria.row("s_utility", probes["s_utility"] if probes else None,
                             measured=criteria.measured_text("s_utility", probes["s_utility"]) + n_text if probes else None))
    # judged at the untrained point farthest past its margin (chapter 07), at that point's margin from the record of
    # margins chosen on validation pairs; without either the criterion is NOT MEASURED (a record from before the
    # margins were chosen on validation holds a fixed 1.25 in each ratio: not used)
    eq = ver.get("insertion_equivalence_untrained", {}).get(model)
    power = bool(ver.get("power_controls", {}).get("base_above_margin"))
    margin = ((ver.get("margin") or {}).get("margins") or {}).get(eq.get("point")) if eq else None
    rows.append(criteria.row("insertion_equivalence", {**eq, "power": power} if eq else None,
                             measured=f"{eq['value']:.2f} [{eq['lo']:.2f}, {eq['hi']:.2f}] at {eq.get('point')}; "
                                      f"base shown above the margin: {power}" if eq else None, threshold=margin))
    g = ver.get("discovery", {}).get(model, {}).get("match")
    rows.append(criteria.row("graph_match", g, measured=f"{g['score']:.2f}; hard checks pass: {bool(g.get('hard_pass'))}"
                             if g else None))

    # engineering checks: they say whether the run worked on this machine, and are counted apart
    chapters = _read(paths, "chapters") or {}
    total = sum(c.get("wall_s", 0) for c in chapters.values()) if chapters else None
    rows.append(criteria.row("book_wall_time", total, threshold=book_budget_s))
    peak = max((c.get("peak_rss_gb", 0) for c in chapters.values()), default=None)
    rows.append(criteria.row("peak_memory", peak, threshold=memory_limit_gb))
    trains = {p.stem[len("train_"):]: json.loads(p.read_text()) for p in paths.metrics.glob("train_*.json")}
    rows.append(criteria.row("nan_free", all(v.get("nan_free") for v in trains.values()) if trains else None,
                             measured=", ".join(f"{k}: {v.get('nan_free')}" for k, v in trains.items()) or None))
    # no "validation improving" row: it compared epoch 1 with the maximum over epochs of the same metric,
    # a check that cannot fail (see causal_lib.core.criteria)
    return rows


def lookalike_rows(paths: RunPaths) -> list[dict]:
    """Per evaluated model, its look-alike errors split by kind (summary.lookalike_error_split): over-defense
    (blocked + refusal) and fragility to benign text (the rest), each paired with the clean twin."""
    from causal_lib.defenses import registry

    def paired(r):
        if not r or r.get("rate") is None:
            return "n/a"
        return f"{r['rate']:+.1%} [{r['lo']:+.1%}, {r['hi']:+.1%}] (n={r['n']}, p={r['p']:.2g})"

    out = []
    for d, s in ((_read(paths, "comparison") or {}).get("summaries") or {}).items():
        split = s.get("lookalike_errors")
        if not split:
            continue
        caused = split["note_caused"]
        out.append({"model": registry.label(d) if d in registry.REGISTRY else d,
                    "over-defense: blocked + refusal (paired)": paired(split["over_defense"]),
                    "fragility to benign text (paired)": paired(split["fragility"]),
                    **{f"errors caused by the note: {k.replace('_', ' ')}": caused[k] for k in split["kinds"]}})
    return out


def failure_cases(paths: RunPaths, model: str = "causal", k: int = 5) -> dict:
    """Examples of what still goes wrong: successful attacks, wrong benign answers, look-alike errors the note
    caused (with their kind)."""
    p = paths.metrics / f"eval_{model}_items.jsonl"
    items = [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
    pick = lambda pred: [{c: it.get(c) for c in ("id", "kind", "family", "goal", "position", "output")}
                         for it in items if pred(it)][:k]
    return {"successful_attacks": pick(lambda it: it["kind"] == "injected" and it.get("success")),
            "benign_errors": pick(lambda it: it["kind"] == "clean" and not it.get("correct")),
            # a look-alike whose clean twin was answered: the note caused the error (an ordinary error otherwise);
            # its kind says whether the model declined (over-defense) or answered wrongly (fragility)
            "lookalike_errors_caused_by_the_note": [
                {c: it.get(c) for c in ("id", "task", "position", "error_kind", "output")} for it in items
                if it["kind"] == "lookalike" and not it.get("correct") and it.get("twin_correct") is not False][:k]}


def comparison_lead(paths: RunPaths) -> str:
    """The completion report's opening answer: chapter 08's lead paragraph (report_text.lead_paragraph) rebuilt from
    metrics/comparison.json; empty when chapter 08 has not run."""
    from causal_lib.book.report_text import lead_paragraph
    from causal_lib.defenses import registry

    comp = _read(paths, "comparison")
    if not comp or not comp.get("summaries"):
        return ""
    seeds = _read(paths, "seeds") or {}
    return lead_paragraph(comp["summaries"], {d: registry.label(d) for d in comp["summaries"]}, comp.get("paired"),
                          seeds=len(seeds.get("seeds", [])) or 1)
