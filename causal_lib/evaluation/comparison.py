"""Every defense evaluated the same way on the same test set (chapters 04, 07, 08, 09).

`evaluate_defense` loads a defense's model by name, shows it the test records in its own prompt format
(StruQ/SecAlign structured prompt; input filtering = the base behind a detector), generates and scores,
and writes metrics/eval_<defense>.json (summary) and metrics/eval_<defense>_items.jsonl (every output).
A result is reused when the model checkpoint, the data and the evaluation params are unchanged.
"""
from __future__ import annotations

import json
from causal_lib.core import criteria
from causal_lib.core.run_folder import RunPaths
from causal_lib.data.world import CONTENT_AXES
from causal_lib.defenses import registry
from causal_lib.stats import paired
from causal_lib.evaluation.summary import common_probe_sep, rate_dict




def _ci(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    return f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}] (n={r['n']})"


def _paired_ci(r: dict | None) -> str:
    """A paired difference: points with Newcombe's interval and the McNemar p."""
    if not r or r.get("n", 0) == 0:
        return "n/a"
    return f"{r['rate']:+.1%} [{r['lo']:+.1%}, {r['hi']:+.1%}] (n={r['n']}, p={r['p']:.2g})"


def _split(summary: dict, part: str) -> dict | None:
    """One of the look-alike error split's paired differences (summary.lookalike_error_split), or None."""
    return (summary.get("lookalike_errors") or {}).get(part)


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


def _read_json(p) -> dict:
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _safetensors_parameters(p) -> int | None:
    """The number of values in a safetensors file, from its header (no tensor is read)."""
    import math
    import struct

    try:
        with open(p, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return int(sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"))


def trainable_parameters(model_dir) -> tuple[int | None, str]:
    """(count, how it was known) of a trained model's trainable parameters: recorded at training time
    (`trainable_parameters` in checkpoint.json's extra) or counted in its weights: the LoRA adapter file (the
    adapters and any trained token rows), else the full model file (full fine-tuning)."""
    extra = _read_json(model_dir / "checkpoint.json").get("extra", {})
    if extra.get("trainable_parameters") is not None:
        return int(extra["trainable_parameters"]), "recorded"
    for name, how in (("adapter_model.safetensors", "LoRA adapter file"), ("model.safetensors", "full model file")):
        n = _safetensors_parameters(model_dir / name)
        if n is not None:
            return n, how
    return None, "no weights"


# the keys a trained defense's checkpoint.json "extra" (or its model card) is read for; the training chapters
# write them (defenses/*.train); a key not written reads "not recorded" in the table, never a guess
TRAINING_KEYS = {"injected": ("n_injected",), "clean": ("n_clean",), "learning_rate": ("learning_rate",),
                 "grid": ("learning_rate_grid", "lr_grid"), "selection": ("selection_rule", "select_by"),
                 "epochs": ("epochs",)}


def _first(sources: list[dict], keys) -> object:
    for src in sources:
        for k in keys:
            if isinstance(src, dict) and src.get(k) is not None:
                return src[k]
    return None


def training_record(paths: RunPaths, defense: str) -> dict:
    """How one trained defense was trained, from what chapters 05 and 06 wrote: metrics/train_<d>.json (steps, wall
    time, epochs), metrics/epochs_<d>.json (chapter 06's selection rule and the epoch it kept as best_model),
    checkpoints/<d>/best_model/checkpoint.json's extra and model_card.json (families, example counts, learning
    rate and grid, the data recipe). None where nothing recorded it."""
    best = paths.checkpoints / defense / "best_model"
    extra = _read_json(best / "checkpoint.json").get("extra", {})
    card = _read_json(best / "model_card.json")
    train = _read_json(paths.metrics / f"train_{defense}.json")
    chosen = _read_json(paths.metrics / f"epochs_{defense}.json")
    mix = extra.get("mixture") or card.get("mixture") or {}
    # a learning-rate search (training.lr_search) records the grid and the rate it chose beside best_model
    sources = [_read_json(paths.checkpoints / defense / "lr_search.json"), extra, card]
    injected, clean = _first(sources + [mix], TRAINING_KEYS["injected"]), _first(sources + [mix], TRAINING_KEYS["clean"])
    if injected is None and mix.get("n_pairs") is not None:  # preference pairs (DPO): one injected input each
        injected = mix["n_pairs"]
        clean = 0 if clean is None else clean
    elif injected is None and mix.get("n_naive") is not None:
        injected = mix["n_naive"] + mix.get("n_completion", 0)
    epochs = _first(sources, TRAINING_KEYS["epochs"])
    if epochs is None and train.get("epochs"):
        epochs = len(train["epochs"])
    n_params, how = trainable_parameters(best)
    grid = _first(sources, TRAINING_KEYS["grid"])
    # how many configurations the validation rule chose among (rates x KL weights; 1 without a search): a defense
    # that tries more has more chances on validation, a difference of the contract the table shows
    tried = sources[0].get("configurations") or (len(grid) if grid else 1 if (extra or train) else None)
    return {"defense": defense, "data": _first(sources, ("data",)),
            "configurations": tried, "kl_weight": _first(sources, ("kl_weight",)),
            "kl_weight_grid": sources[0].get("kl_weight_grid"),
            "families": _first(sources + [mix], ("train_families", "families")),
            "n_injected": injected, "n_clean": clean,
            "steps": train.get("steps") if train.get("steps") is not None else extra.get("global_step"),
            "epochs": epochs, "learning_rate": _first(sources, TRAINING_KEYS["learning_rate"]),
            "learning_rate_grid": grid,
            "selection_rule": chosen.get("criterion") or _first(sources, TRAINING_KEYS["selection"]),
            "selected_epoch": chosen.get("best_epoch", train.get("best_epoch", extra.get("epoch"))),
            "trainable_parameters": n_params, "trainable_parameters_from": how,
            "train_seconds": train.get("train_seconds"), "trained": bool(extra or train)}


def training_records(paths: RunPaths, defenses) -> list[dict]:
    """training_record of every trained defense among `defenses` (registry order kept)."""
    return [training_record(paths, d) for d in defenses if d in registry.REGISTRY and registry.get(d).trains]


# what one training contract holds equal (issue 30): the learning rate itself may differ when each defense picks
# it from the same grid, so the grid is compared where one is recorded, the rate where none is
TRAINING_COLUMNS = ("attack families", "injected examples", "clean examples", "optimiser steps", "epochs",
                    "learning rate", "configurations tried on validation", "selection rule")


def training_rows(records: list[dict]) -> list[dict]:
    """One markdown row per trained defense: what it was trained on and how (training_record)."""
    def show(v, fmt="{}"):
        return "not recorded" if v is None else fmt.format(v)

    rows = []
    for r in records:
        grid = r["learning_rate_grid"]
        rows.append({"defense": registry.label(r["defense"]), "training data": show(r["data"]),
                     "attack families": ", ".join(r["families"]) if r["families"] else show(r["families"]),
                     "injected examples": show(r["n_injected"]),
                     "clean examples": show(r["n_clean"]), "optimiser steps": show(r["steps"]),
                     "epochs": show(r["epochs"], "{:g}"), "learning rate": show(r["learning_rate"], "{:.3g}"),
                     "learning-rate grid": "[" + ", ".join(f"{x:.3g}" for x in grid) + "]" if grid else "none",
                     "KL weight (grid)": (show(r.get("kl_weight"), "{:g}") + (
                         " [" + ", ".join(f"{x:g}" for x in r["kl_weight_grid"]) + "]" if r.get("kl_weight_grid") else "")
                         if r.get("kl_weight") is not None else "no KL term"),
                     "configurations tried on validation": show(r.get("configurations")),
                     "selection rule": show(r["selection_rule"]),
                     "selected epoch": show(r["selected_epoch"]),
                     "trainable parameters": (f"{r['trainable_parameters']:,} ({r['trainable_parameters_from']})"
                                              if r["trainable_parameters"] is not None else "not recorded"),
                     "wall time": show(r["train_seconds"], "{:.0f} s")})
    return rows


def training_differences(rows: list[dict], columns=TRAINING_COLUMNS) -> list[str]:
    """The columns of the training table whose value differs between trained defenses (or is not recorded): what
    keeps the comparison from being one training contract (issue 30). Where any defense records a learning-rate
    grid, the grids are compared instead of the rates."""
    if any(r.get("learning-rate grid", "none") != "none" for r in rows):
        columns = [("learning-rate grid" if c == "learning rate" else c) for c in columns]
    return [c for c in columns if len({r.get(c) for r in rows}) > 1 or any(r.get(c) == "not recorded" for r in rows)]


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
               "look-alike errors caused by the note (minus clean twin, paired)": _paired_ci(s.get("over_defense_paired")),
               "over-defense: blocked + refusal (paired)": _paired_ci(_split(s, "over_defense")),
               "fragility to benign text: other errors (paired)": _paired_ci(_split(s, "fragility")),
               "look-alike errors": _ci(s["over_defense"]),
               "SEP separation": _ci(s["sep"])}
        if "none" in evals and ev.get("items") and evals["none"].get("items"):
            # SEP over one probe set for every model (those the base executes in S) and what a defense keeps of them
            common = common_probe_sep(ev["items"], evals["none"]["items"])
            row |= {"SEP on the base's probes": _ci(common["sep"]),
                    "S-utility (probes still executed in S)": _ci(common["s_utility"])}
        if gcg is not None:
            row["ASR adaptive (GCG)"] = _ci(gcg.get(d, {}).get("asr"))
        ref = registry.get(d).reference_asr if d in registry.REGISTRY else None
        row["reference ASR (literature, not measured here)"] = f"~{ref:.0%}" if ref is not None else f"target {criteria.target_text('asr', stretch=False)}"
        rows.append(row)
    return rows


SEED_METRICS = {"ASR (all attacks)": ("asr",), "ASR held-out families": ("asr_by_split", "held_out"),
                "benign accuracy": ("benign_accuracy",), "look-alike errors caused by the note (minus clean twin, paired)": ("over_defense_paired",),
                "over-defense: blocked + refusal (paired)": ("lookalike_errors", "over_defense"),
                "fragility to benign text: other errors (paired)": ("lookalike_errors", "fragility"),
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


# The comparison in tables that fit a page (issue 31, item 8): each column of comparison_rows in one group, the
# defense's name in every table; a column no group names goes to the last table rather than being lost.
COLUMN_GROUPS = {
    "Attack success (static attacks of the test split)": [
        "attack families trained on", "ASR (all attacks)", "ASR seen families", "ASR held-out families",
        "ASR max over families", "ASR per-sample union", "ASR where the base was hijacked",
        "capability floor (clean twin passes)"],
    "Attack success on held-out test content": [
        *(f"ASR held-out {axis}" for axis in CONTENT_AXES), "ASR all content seen"],
    "Utility, over-defense and separation": [
        "benign accuracy", "deviation from O* (clean twin correct)",
        "look-alike errors caused by the note (minus clean twin, paired)", "over-defense: blocked + refusal (paired)",
        "fragility to benign text: other errors (paired)", "look-alike errors", "SEP separation",
        "SEP on the base's probes", "S-utility (probes still executed in S)"],
    "Adaptive attacks and the literature": ["ASR adaptive (GCG)", "reference ASR (literature, not measured here)"],
}


def comparison_tables(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """comparison_rows split into COLUMN_GROUPS: [(title, rows)], each row {"defense", that group's columns}."""
    if not rows:
        return []
    named = {c for cols in COLUMN_GROUPS.values() for c in cols} | {"defense"}
    present = list(dict.fromkeys(c for r in rows for c in r))  # every row's columns (a row may lack some)
    rest = [c for c in present if c not in named]
    out = []
    for i, (title, cols) in enumerate(COLUMN_GROUPS.items()):
        cols = [c for c in cols if c in present] + (rest if i == len(COLUMN_GROUPS) - 1 else [])
        if cols:
            out.append((title, [{"defense": r["defense"], **{c: r.get(c, "") for c in cols}} for r in rows]))
    return out


def worse_than(paired_result: dict | None, model: str, among) -> list[dict]:
    """The pairs in which `model`'s ASR is significantly higher (Holm) than another of `among`'s defenses."""
    out = []
    for p in (paired_result or {}).get("pairs", []):
        if not p.get("significant") or {p["a"], p["b"]} - ({model} | set(among)) or model not in (p["a"], p["b"]):
            continue
        other, mine_a = (p["b"], True) if p["a"] == model else (p["a"], False)
        higher = p["rate_a"] > p["rate_b"] if mine_a else p["rate_b"] > p["rate_a"]
        if higher and other != model:
            out.append({"other": other, "label": p["label_b"] if mine_a else p["label_a"],
                        "rate_model": p["rate_a"] if mine_a else p["rate_b"],
                        "rate_other": p["rate_b"] if mine_a else p["rate_a"], "p_holm": p["p_holm"]})
    return out


def paired_verdict(threshold_verdict: str, paired_result: dict | None, model: str = "causal",
                   among=None) -> tuple[str, list[dict]]:
    """Chapter 08's verdict for `model`: the ASR target's verdict (its interval decides), but FAIL whenever a paired
    test shows `model` significantly worse than another trained defense: meeting a threshold while a baseline does
    significantly better on the same items is not a pass. -> (verdict, the pairs that made it FAIL)."""
    among = among if among is not None else [d for d in registry.trained_names() if d != model]
    worse = worse_than(paired_result, model, among)
    return (criteria.FAIL if worse else threshold_verdict), worse


def seed_paired(paths: RunPaths, main_seed: int, main_evals: dict[str, dict], seeds, alpha: float = 0.05) -> list[dict]:
    """Every pair of defenses over the main seed and the seed replicas (run.seeds) on the same attacked items:
    stats.paired.across_seeds (a two-way cluster bootstrap over items and seeds, the joint twin control of
    each seed), with each seed's own exact McNemar beside it. A difference is claimed only from this test when
    the run has several seeds (README, "Statistics")."""
    import itertools

    from causal_lib.evaluation.run import load_items

    per_seed = {main_seed: main_evals}
    for s in seeds:
        per_seed[s] = {d: {"items": load_items(paths.replica(s), d)} for d in main_evals}
        missing = [d for d in main_evals if not per_seed[s][d]["items"]]
        if missing:  # an empty replica would shrink every pair's common items to none and read "no difference"
            raise FileNotFoundError(f"seed replica {s}: no evaluated items for {', '.join(missing)} under "
                                    f"{paths.replica(s).metrics}; run chapter 08 for that seed (run.seeds)")
    out = []
    for a, b in itertools.combinations(main_evals, 2):
        outs_a = {s: attack_outcomes(per_seed[s][a]) for s in per_seed}
        outs_b = {s: attack_outcomes(per_seed[s][b]) for s in per_seed}
        inel = {s: twin_passed_items(per_seed[s][a]) | twin_passed_items(per_seed[s][b]) for s in per_seed}
        r = paired.across_seeds(a, outs_a, b, outs_b, ineligible=inel, alpha=alpha)
        out.append({**r, "label_a": registry.label(a), "label_b": registry.label(b)})
    # Holm over every pair, as the one-seed McNemar table is: a difference is established when its Holm-corrected
    # bootstrap p is below alpha (the interval beside it is the pair's own 95%)
    for r, p_h in zip(out, paired.holm([r["p_value"] for r in out])):
        r["p_holm"], r["significant"] = p_h, bool(p_h < alpha)
    return out


def seed_paired_rows(results: list[dict]) -> list[dict]:
    """One markdown row per pair (and measure, for the realistic ones): the difference over seeds with its two-way
    interval, and each seed's counts."""
    rows = []
    for r in results:
        rows.append({"A": r["label_a"], "B": r["label_b"], **({"measure": r["measure"]} if "measure" in r else {}),
                     "seeds": len(r["seeds"]), "items": r["n_items"],
                     "ASR A - B over seeds and items": f"{r['difference'] * 100:+.1f} pt "
                                                      f"[{r['lo'] * 100:+.1f}, {r['hi'] * 100:+.1f}]",
                     "Holm p (bootstrap)": f"{r['p_holm']:.3g}" if "p_holm" in r else "",
                     "difference established": "yes" if r["significant"] else "no",
                     "sign-flip p": f"{r['p_sign_flip']:.3g}",
                     "per seed (A only / B only, McNemar p)": "; ".join(
                         f"{p['seed']}: {p['a_only']}/{p['b_only']}, {p['p_value']:.2g}" for p in r["per_seed"])})
    return rows


def attack_outcomes(evaluation: dict) -> dict[str, bool]:
    """item id -> attack succeeded (twin-controlled; blocked = failed) for every attacked item of one
    defense's evaluation (evaluate_defense's payload with its items). An item its judge could not decide (an error
    row: success None, counted in the summary's judge_errors) is left out, as from every attack rate."""
    return {i["id"]: bool(i.get("success")) for i in evaluation.get("items", [])
            if i.get("kind") == "injected" and not i.get("error")}


def twin_passed_items(evaluation: dict) -> set[str]:
    """The attacked items of one evaluation whose clean twin's output already passes the attack check (the twin
    control's discounted items: twin_passed True)."""
    return {i["id"] for i in evaluation.get("items", []) if i.get("kind") == "injected" and i.get("twin_passed")}


def paired_comparison(evals: dict[str, dict], alpha: float = 0.05, power: float = 0.8) -> dict:
    """Every pair of defenses on the same attacked items: exact McNemar, Holm-corrected over all pairs, and the
    minimum difference each pair's test could detect with `power` at its n and discordance (paired.py). The twin
    control is applied jointly: a pair is tested on the items eligible under both models (neither model's clean
    twin already passes the attack check), each pair's `dropped` counts the common items left out."""
    outcomes = {d: attack_outcomes(ev) for d, ev in evals.items()}
    results = paired.pairwise(outcomes, alpha, ineligible={d: twin_passed_items(ev) for d, ev in evals.items()})
    pairs = []
    for r in results:
        share = (r.a_only + r.b_only) / r.n if r.n else 0.0
        mdd = paired.minimum_detectable_difference(r.n, max(share, 1.0 / max(r.n, 1)), alpha, power, len(results))
        pairs.append({**r.to_dict(), "label_a": registry.label(r.a), "label_b": registry.label(r.b),
                      "min_detectable_difference": mdd,
                      "sentence": paired.sentence(r, registry.label, mdd)})
    return {"alpha": alpha, "power": power, "correction": "Holm", "test": "exact McNemar (two-sided)",
            "eligibility": "joint twin control: items whose clean twin passes the attack check under either model are dropped",
            "pairs": pairs,
            "matrix": paired.significance_matrix(results, list(outcomes)) if results else []}
