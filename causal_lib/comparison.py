"""Every defense evaluated the same way on the same test set (chapters 04, 07, 08, 09).

`evaluate_defense` loads a defense's model by name, shows it the test records in its own prompt format
(StruQ/SecAlign structured prompt; input filtering = the base behind a detector), generates and scores,
and writes metrics/eval_<defense>.json (summary) and metrics/eval_<defense>_items.jsonl (every output).
A result is reused when the model checkpoint, the data and the evaluation params are unchanged.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .base_model import load_model, model_dir, records_for
from .chapter import RunPaths, write_json
from .config import Config


def _cache_key(cfg: Config, paths: RunPaths, defense: str, split: str) -> str:
    d = model_dir(paths, defense)
    fp = json.loads((d / "checkpoint.json").read_text()).get("fingerprint") if (d / "checkpoint.json").exists() \
        else cfg.model.name_or_path
    manifest = paths.data / "manifest.json"
    data = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else ""
    blob = json.dumps({"fp": fp, "data": data, "eval": cfg.to_dict()["eval"], "defense": defense, "split": split,
                       "filter": cfg.to_dict().get("filter"), "seed": cfg.run.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def block_for(cfg: Config, paths: RunPaths, defense: str, model, tokenizer):
    """The input filter's `block(records) -> list[bool]` for defense "filter", else None."""
    if defense != "filter":
        return None
    from .baselines.filters import load_or_train_filter

    return load_or_train_filter(cfg, paths, model, tokenizer).block


def evaluate_defense(cfg: Config, paths: RunPaths, defense: str, split: str = "test", records=None,
                     use_cache: bool = True) -> dict:
    from .data import load_split
    from .evaluate import evaluate_records, summarise

    key = _cache_key(cfg, paths, defense, split) if records is None else None
    out_path = paths.metrics / f"eval_{defense}.json"
    if use_cache and key and out_path.exists():
        cached = json.loads(out_path.read_text())
        if cached.get("cache_key") == key:
            cached["items"] = load_items(paths, defense)
            return cached
    model, tok = load_model(cfg, paths, defense)
    recs = records if records is not None else load_split(paths.data, split)
    if not recs:
        raise ValueError(f"no {split} records under {paths.data}: rebuild the data (chapter 02)")
    block = block_for(cfg, paths, defense, model, tok)
    results = evaluate_records(model, tok, records_for(defense, recs, tok), cfg.eval, block=block,
                               max_length=cfg.model.max_seq_length - cfg.eval.max_new_tokens, seed=cfg.run.seed)
    summary = summarise(results)
    payload = {"defense": defense, "split": split, "cache_key": key, "seed": cfg.run.seed, "summary": summary}
    if key:
        items = paths.metrics / f"eval_{defense}_items.jsonl"
        items.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in results))
        write_json(out_path, payload)
    payload["items"] = [r.to_dict() for r in results]
    return payload


def load_items(paths: RunPaths, defense: str) -> list[dict]:
    p = paths.metrics / f"eval_{defense}_items.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


# The plan's literature figures (DESIGN.md s.5): shown only in a column labelled "reference", never as measured.
REFERENCE_ASR = {"none": 0.87, "filter": 0.62, "struq": 0.41, "secalign": 0.34, "causal": None}
TARGET_ASR = 0.10


def _ci(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    return f"{r['rate']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}] (n={r['n']})"


def comparison_rows(evals: dict[str, dict], gcg: dict[str, dict] | None = None) -> list[dict]:
    """One row per defense: measured rates with 95% Clopper-Pearson intervals, the reference column apart."""
    from .defenses import LABELS

    rows = []
    for d, ev in evals.items():
        s = ev["summary"]
        split = s.get("asr_by_split", {})
        row = {"defense": LABELS.get(d, d), "ASR (all attacks)": _ci(s["asr"]),
               "ASR seen families": _ci(split.get("seen")), "ASR held-out families": _ci(split.get("held_out")),
               "ASR max over families": _ci(s.get("asr_max_family")) + f" {s.get('asr_max_family', {}).get('family') or ''}",
               "ASR per-sample union": _ci(s.get("asr_union")),
               "benign accuracy": _ci(s["benign_accuracy"]), "over-defense": _ci(s["over_defense"]),
               "SEP separation": _ci(s["sep"])}
        if gcg is not None:
            row["ASR adaptive (GCG)"] = _ci(gcg.get(d, {}).get("asr"))
        ref = REFERENCE_ASR.get(d)
        row["reference ASR (literature, not measured here)"] = f"~{ref:.0%}" if ref is not None else "target < 10%"
        rows.append(row)
    return rows


SEED_METRICS = {"ASR (all attacks)": ("asr",), "ASR held-out families": ("asr_by_split", "held_out"),
                "benign accuracy": ("benign_accuracy",), "over-defense": ("over_defense",), "SEP separation": ("sep",)}


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
    from .defenses import LABELS

    rows = []
    for d, metrics in spread["defenses"].items():
        row = {"defense": LABELS.get(d, d), "seeds": len(spread["seeds"])}
        for name, m in metrics.items():
            row[name] = f"{m['mean']:.1%} ± {m['sd']:.1%} [{m['min']:.1%}, {m['max']:.1%}]"
        rows.append(row)
    return rows
