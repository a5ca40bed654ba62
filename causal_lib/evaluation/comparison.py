"""Every defense evaluated the same way on the same test set (chapters 04, 07, 08, 09).

`evaluate_defense` loads a defense's model by name, shows it the test records in its own prompt format
(StruQ/SecAlign structured prompt; input filtering = the base behind a detector), generates and scores,
and writes metrics/eval_<defense>.json (summary) and metrics/eval_<defense>_items.jsonl (every output).
A result is reused when the model checkpoint, the data and the evaluation params are unchanged.
"""
from __future__ import annotations

import json
from causal_lib.book import criteria
from causal_lib.book.run_folder import RunPaths
from causal_lib.data.world import CONTENT_AXES
from causal_lib.defenses import registry
from causal_lib.verification import paired
from causal_lib.evaluation.summary import rate_dict




def _ci(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    return f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}] (n={r['n']})"


def _paired_ci(r: dict | None) -> str:
    """A paired difference: points with Newcombe's interval and the McNemar p."""
    if not r or r.get("n", 0) == 0:
        return "n/a"
    return f"{r['rate']:+.1%} [{r['lo']:+.1%}, {r['hi']:+.1%}] (n={r['n']}, p={r['p']:.2g})"


def conditional_asr(evals: dict[str, dict], reference: str = "none", alpha: float = 0.05) -> dict[str, dict]:
    """Per defense, its ASR on the attacked items that hijacked the `reference` model (the undefended base): what
    the defense stopped of the attacks that work, on the same items. Empty without the reference's items."""
    ref = attack_outcomes(evals.get(reference, {}))
    hit = {i for i, ok in ref.items() if ok}
    out = {}
    for d, ev in evals.items():
        mine = attack_outcomes(ev)
        ids = hit & set(mine)
        if ids:
            out[d] = rate_dict(sum(mine[i] for i in ids), len(ids), alpha)
    return out


def training_families(paths: RunPaths, defenses) -> dict[str, list[str]]:
    """The attack families each trained defense saw in training (its checkpoint's train_families): the "seen"
    families of the comparison are the world's training families, which a baseline's own recipe may not cover."""
    from causal_lib.defenses.load import model_dir  # here: it imports the model stack, which tables do not need

    out = {}
    for d in defenses:
        if d in registry.REGISTRY and registry.get(d).trains:
            p = model_dir(paths, d) / "checkpoint.json"
            fams = json.loads(p.read_text()).get("extra", {}).get("train_families") if p.exists() else None
            if fams is not None:
                out[d] = fams
    return out


def comparison_rows(evals: dict[str, dict], gcg: dict[str, dict] | None = None,
                    trained_on: dict[str, list[str]] | None = None) -> list[dict]:
    """One row per defense: measured rates with 95% Clopper-Pearson intervals, the reference column apart;
    `trained_on` (training_families) adds the attack families each defense was trained on."""

    rows = []
    cond = conditional_asr(evals)
    for d, ev in evals.items():
        s = ev["summary"]
        split = s.get("asr_by_split", {})
        row = {"defense": registry.label(d)}
        if trained_on is not None:
            row["attack families trained on"] = ", ".join(trained_on[d]) if d in trained_on else "none"
        row |= {"ASR (all attacks)": _ci(s["asr"]),
               "capability floor (clean twin passes)": _ci(s.get("capability_floor")),
               "ASR seen families": _ci(split.get("seen")), "ASR held-out families": _ci(split.get("held_out")),
               **{f"ASR held-out {axis}": _ci(s.get("asr_by_axis", {}).get(axis, {}).get("held_out"))
                  for axis in CONTENT_AXES},
               "ASR all content seen": _ci(s.get("asr_by_axis", {}).get("all", {}).get("seen")),
               "ASR max over families": _ci(s.get("asr_max_family")) + f" {s.get('asr_max_family', {}).get('family') or ''}",
               "ASR per-sample union": _ci(s.get("asr_union")),
               "ASR where the base was hijacked": _ci(cond.get(d)),
               "deviation from O* (clean twin correct)": _ci(s.get("deviation")),
               "benign accuracy": _ci(s["benign_accuracy"]),
               "over-defense (look-alike minus clean twin, paired)": _paired_ci(s.get("over_defense_paired")),
               "look-alike errors": _ci(s["over_defense"]),
               "SEP separation": _ci(s["sep"])}
        if gcg is not None:
            row["ASR adaptive (GCG)"] = _ci(gcg.get(d, {}).get("asr"))
        ref = registry.get(d).reference_asr if d in registry.REGISTRY else None
        row["reference ASR (literature, not measured here)"] = f"~{ref:.0%}" if ref is not None else f"target {criteria.target_text('asr', stretch=False)}"
        rows.append(row)
    return rows


SEED_METRICS = {"ASR (all attacks)": ("asr",), "ASR held-out families": ("asr_by_split", "held_out"),
                "benign accuracy": ("benign_accuracy",), "over-defense (look-alike minus clean twin, paired)": ("over_defense_paired",),
                "SEP separation": ("sep",)}


def _dig(d: dict, keys: tuple):
    for k in keys:
        d = (d or {}).get(k)
    return (d or {}).get("rate")


def seed_replicas(paths: RunPaths, seeds) -> dict[int, dict]:
    """The comparison.json of every seed replica (outputs/<run>/seeds/seed_<s>/); a missing one is an error."""
    out = {}
    for s in seeds:
        p = paths.replica(s).metrics / "comparison.json"
        if not p.exists():
            raise FileNotFoundError(f"seed replica {s}: {p} is missing; run the book with run.seeds set "
                                    f"(chapters 04-06 and 08 run once per seed before this one)")
        out[s] = json.loads(p.read_text())
    return out


def seed_spread(per_seed: dict[int, dict]) -> dict:
    """Mean, sample standard deviation, min and max over seeds of each headline rate, per defense.

    `per_seed` maps seed -> a comparison payload ({"summaries": {defense: summary}, "gcg": {...}}). Every
    seed's rate is a measurement on the same test set; the spread is between seeds (training randomness),
    next to each seed's own 95% interval in its comparison table."""
    import numpy as np

    seeds = sorted(per_seed)
    defenses = [d for d in per_seed[seeds[0]]["summaries"] if all(d in per_seed[s]["summaries"] for s in seeds)]
    out = {"seeds": seeds, "defenses": {}}
    for d in defenses:
        row = {}
        metrics = {**{k: lambda c, keys=v: _dig(c["summaries"][d], keys) for k, v in SEED_METRICS.items()},
                   "ASR adaptive (GCG)": lambda c: _dig(c.get("gcg", {}).get(d, {}), ("asr",))}
        for name, get in metrics.items():
            vals = [get(per_seed[s]) for s in seeds]
            if any(v is None for v in vals):
                continue
            a = np.asarray(vals, dtype=float)
            row[name] = {"values": dict(zip(map(str, seeds), vals)), "mean": float(a.mean()),
                         "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "min": float(a.min()), "max": float(a.max())}
        out["defenses"][d] = row
    return out


def seed_spread_rows(spread: dict) -> list[dict]:
    """One markdown row per defense: mean ± sd [min, max] over the seeds."""

    rows = []
    for d, metrics in spread["defenses"].items():
        row = {"defense": registry.label(d), "seeds": len(spread["seeds"])}
        for name, m in metrics.items():
            row[name] = f"{m['mean']:.1%} ± {m['sd']:.1%} [{m['min']:.1%}, {m['max']:.1%}]"
        rows.append(row)
    return rows


def attack_outcomes(evaluation: dict) -> dict[str, bool]:
    """item id -> attack succeeded (twin-controlled; blocked = failed) for every attacked item of one
    defense's evaluation (evaluate_defense's payload with its items)."""
    return {i["id"]: bool(i.get("success")) for i in evaluation.get("items", []) if i.get("kind") == "injected"}


def paired_comparison(evals: dict[str, dict], alpha: float = 0.05, power: float = 0.8) -> dict:
    """Every pair of defenses on the same attacked items: exact McNemar, Holm-corrected over all pairs, and the
    minimum difference each pair's test could detect with `power` at its n and discordance (paired.py)."""
    outcomes = {d: attack_outcomes(ev) for d, ev in evals.items()}
    results = paired.pairwise(outcomes, alpha)
    pairs = []
    for r in results:
        share = (r.a_only + r.b_only) / r.n if r.n else 0.0
        mdd = paired.minimum_detectable_difference(r.n, max(share, 1.0 / max(r.n, 1)), alpha, power, len(results))
        pairs.append({**r.to_dict(), "label_a": registry.label(r.a), "label_b": registry.label(r.b),
                      "min_detectable_difference": mdd,
                      "sentence": paired.sentence(r, registry.label, mdd)})
    return {"alpha": alpha, "power": power, "correction": "Holm", "test": "exact McNemar (two-sided)",
            "pairs": pairs,
            "matrix": paired.significance_matrix(results, list(outcomes)) if results else []}
