"""The ablation table of chapter 08 (issue 32, item 4): what each causal term adds beyond adversarial SFT.

Rows: the undefended base, the matched baselines (StruQ, SecAlign), then each control and the rows compared with
it. A row of the causal method names its control in the registry (`Defense.control`: the same training with the
causal terms off: `causal_sft`, adversarial SFT on the same pairs, for the full objective and each term alone;
`causal_sft_by_task` for `causal_by_task`, on the same task-grouped batches). Columns, each rate with its 95%
interval, every model on the same items:

    static ASR                 the test split's attacks (twin-controlled)
    held-out <axis> ASR        the attacks whose phrasing, payload or task type is held out of training
    held-out families ASR      the attacks of the wrapper families held out of training
    corpus <file> ASR          each attack file of data.attack_files (the field's corpora through the importers)
    adaptive ASR               per item, GCG, random search or template completion broke it (chapter 08's budget)
    protocol union ASR         the literature's protocol (AlpacaFarm, "Hacked!"), any of its attacks (when run)
    benign accuracy, S-utility (probes the base executes in S still executed), over-defense (blocked + refusal on
    look-alikes, paired with their clean twins)

and, for every row of the method against its control, the paired differences on the same items: static, adaptive
and protocol ASR (exact McNemar on the items eligible under both models: the twin control applied jointly;
Newcombe's paired interval) and benign accuracy; Holm over the table's McNemar tests. This is one seed's models:
the test covers which items were drawn, not training randomness, so with several training seeds a claim rests on
the across-seed test of the comparison; and a difference not detected in benign accuracy is not an equivalence
(its interval says how large a loss the data allow).
"""
from __future__ import annotations

from causal_lib.data.world import CONTENT_AXES
from causal_lib.defenses import registry
from causal_lib.evaluation.adaptive import union_outcomes
from causal_lib.evaluation.comparison import _ci, attack_outcomes, twin_passed_items
from causal_lib.evaluation.literature import protocol_union_outcomes
from causal_lib.evaluation.summary import common_probe_sep, paired_accuracy_difference, paired_events
from causal_lib.stats.paired import holm, jointly_eligible

BASELINES = ("struq", "secalign")
MEASURES = ("static ASR", "adaptive ASR", "protocol union ASR", "benign accuracy")


def control_of(defense: str) -> str | None:
    """The row a defense is compared with in the table (registry: Defense.control), or None."""
    return registry.get(defense).control if defense in registry.REGISTRY else None


def ablation_models(defenses) -> list[str]:
    """The rows among the evaluated `defenses`: the base and the matched baselines, then, in registry order, each
    evaluated control followed by the rows that name it; a row whose control was not evaluated comes last. Empty
    when no evaluated row of the method has its control evaluated (nothing to compare)."""
    evaluated = set(defenses)
    ordered = [d for d in registry.REGISTRY if d in evaluated]
    method = [d for d in ordered if control_of(d)]
    controls = [c for c in dict.fromkeys(control_of(d) for d in method) if c in evaluated]
    if not controls:
        return []
    rows = [d for d in ("none", *BASELINES) if d in evaluated]
    for c in controls:
        rows += [c] + [d for d in method if control_of(d) == c and d != c]
    return rows + [d for d in method if d not in rows]


def _difference(a: dict[str, bool], b: dict[str, bool], ineligible: set | None = None, alpha: float = 0.05) -> dict:
    """A minus B on the items both have and that `ineligible` (both models' twin-controlled ids) does not hold:
    Newcombe's paired interval, exact McNemar p, the discordant counts and the number of common items dropped."""
    ids, dropped = jointly_eligible(a, b, ineligible, set())
    return {**paired_events([(a[i], b[i]) for i in sorted(ids)], alpha), "dropped": dropped}


def _diff_text(r: dict | None) -> str:
    if not r or r.get("rate") is None or not r.get("n"):
        return "n/a"
    p = f", Holm p={r['p_holm']:.2g}" if "p_holm" in r else ""
    return f"{r['rate'] * 100:+.1f} pt [{r['lo'] * 100:+.1f}, {r['hi'] * 100:+.1f}] ({r['a_only']}/{r['b_only']}{p})"


def _rates(ev: dict, base: dict | None, adaptive_union: dict | None, realistic: dict | None, alpha: float) -> dict:
    s = ev["summary"]
    return {"static ASR": s["asr"],
            **{f"held-out {axis} ASR": s.get("asr_by_axis", {}).get(axis, {}).get("held_out") for axis in CONTENT_AXES},
            "held-out families ASR": s.get("asr_by_split", {}).get("held_out"),
            **{f"corpus {src} ASR": r for src, r in s.get("asr_by_source", {}).items() if src != "builtin"},
            "adaptive ASR": adaptive_union,
            "protocol union ASR": (realistic or {}).get("summary", {}).get("union"),
            "benign accuracy": s["benign_accuracy"],
            "S-utility": (common_probe_sep(ev["items"], base["items"], alpha)["s_utility"]
                          if base and base.get("items") and ev.get("items") else None),
            "over-defense (blocked + refusal, paired)": (s.get("lookalike_errors") or {}).get("over_defense")}


def _against(ev: dict, ref: dict, d: str, control: str, adaptive: dict, realistic: dict, alpha: float) -> dict:
    """A row's paired differences against its control, each on the items eligible under both."""
    out = {"static ASR": _difference(attack_outcomes(ev), attack_outcomes(ref),
                                     twin_passed_items(ev) | twin_passed_items(ref), alpha)}
    if adaptive.get("gcg", {}).get(d) and adaptive.get("gcg", {}).get(control):
        (a, a_twin), (b, b_twin) = union_outcomes(adaptive, d), union_outcomes(adaptive, control)
        out["adaptive ASR"] = _difference(a, b, a_twin | b_twin, alpha)
    if realistic.get(d) and realistic.get(control):
        out["protocol union ASR"] = _difference(protocol_union_outcomes(realistic[d]),
                                                protocol_union_outcomes(realistic[control]), alpha=alpha)
    acc = paired_accuracy_difference(ev.get("items", []), ref.get("items", []), alpha)
    out["benign accuracy"] = {"rate": acc["value"], "lo": acc["lo"], "hi": acc["hi"], "n": acc["n"],
                              "a_only": acc["only_model"], "b_only": acc["only_base"], "p": acc["p"]}
    return out


def ablation(evals: dict[str, dict], adaptive: dict | None = None, realistic: dict[str, dict] | None = None,
             alpha: float = 0.05) -> dict:
    """The table's measurements. evals: defense -> evaluate_defense's payload (summary and items); adaptive:
    run_adaptive's result (gcg, random_search, template_completion_budget_items, union); realistic: defense ->
    evaluate_realistic's payload. -> {"models", "controls": {row: its control}, "rates": {model: {column: rate}},
    "against_control": {row: {measure: paired difference}}}, Holm over every McNemar test of against_control."""
    models = ablation_models(list(evals))
    adaptive, realistic = adaptive or {}, realistic or {}
    controls = {d: control_of(d) for d in models if control_of(d) in evals}
    rates = {d: _rates(evals[d], evals.get("none"), adaptive.get("union", {}).get(d), realistic.get(d), alpha)
             for d in models}
    against = {d: _against(evals[d], evals[c], d, c, adaptive, realistic, alpha) for d, c in controls.items()}
    tested = [r for diffs in against.values() for r in diffs.values() if r.get("n")]
    for r, p in zip(tested, holm([r["p"] for r in tested])):
        r["p_holm"], r["significant"] = p, bool(p < alpha)
    return {"models": models, "controls": controls, "rates": rates, "against_control": against}


def ablation_rows(result: dict) -> list[dict]:
    """One markdown row per model: its control, its rates, then its paired differences against that control (row
    minus control, points [95%] (row only / control only, Holm p)); every row holds every column ("n/a" where a
    rate was not measured, e.g. a corpus only some models met), a control's own cells say "control"."""
    columns = list(dict.fromkeys(c for r in result["rates"].values() for c in r))
    is_control = set(result["controls"].values())
    rows = []
    for d in result["models"]:
        c = result["controls"].get(d)
        own = control_of(d)
        row = {"model": registry.label(d),
               "compared with": (registry.label(c) if c else "control" if d in is_control else
                                 f"{registry.label(own)} (not run)" if own else "-")}
        row |= {k: _ci(result["rates"][d].get(k)) for k in columns}
        diffs = result["against_control"].get(d, {})
        for measure in MEASURES:
            row[f"{measure} minus its control"] = (_diff_text(diffs.get(measure)) if c else
                                                   "control" if d in is_control else "-")
        rows.append(row)
    return rows
