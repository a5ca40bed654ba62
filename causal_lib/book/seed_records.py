"""A comparison saved seed by seed: the run of record's shape when one book run per seed does not fit a sitting (2 CPU
cores). Each seed is a run folder trained and evaluated by the book's own functions (chapters 05 and 08); this module
collects a seed's small results into results/ and computes the across-seed paired tests over every seed folder.

    python -m causal_lib.evaluation --model RUN_FOLDER/checkpoints/D/best_model --data-dir RUN_FOLDER/data \
        --defense-name D --no-builtin --attacks spikee.jsonl --attacks garak.jsonl --out RUN_FOLDER/metrics/corpora_D.json
    python -m causal_lib.book.results collect RUN_FOLDER results/<preset>/<date>-<commit>/seed_<s>
    python -m causal_lib.book.results across results/<...>/across_seeds.json 0:FOLDER 1:FOLDER 2:FOLDER

A seed folder's files (written by the book or by the commands above): metrics/eval_<d>.json and eval_<d>_items.jsonl
(chapter 08's world test split), metrics/realistic_<d>.json (chapter 08's realistic benchmarks), metrics/corpora_<d>.json
(the field's corpora: the attack files alone on the clean test items, the evaluation command above; the files are
expanded with the data's seed, so every seed and model reads the same items),
checkpoints/<d>/best_model/checkpoint.json and metrics/train_<d>_log.jsonl (chapter 05). What is not there yet is null
in the seed's summary and left out of the tests, and each test row names the seeds it is over.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from causal_lib.core.run_folder import RunPaths, write_json
from causal_lib.evaluation.comparison import attack_outcomes, twin_passed_items
from causal_lib.stats import paired
from causal_lib.training.trainer import read_train_log

MODELS = ("causal", "causal_sft")


class SeedRecordError(RuntimeError):
    """A seed folder that cannot be collected; the message names the file and what to run."""


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def corpora_path(run_dir: Path, defense: str) -> Path:
    return Path(run_dir) / "metrics" / f"corpora_{defense}.json"


def _corpora_summary(payload: dict | None) -> dict | None:
    if payload is None:
        return None
    s = payload["summary"]
    return {"attack_files": [Path(f).name for f in payload.get("attack_files", [])],
            "asr_by_source": s.get("asr_by_source", {}), "asr": s.get("asr"),
            "twin_control": s.get("twin_control"), "truncated": s.get("truncated_by_source", s.get("truncated")),
            "seconds": payload.get("seconds")}


def collect(run_dir: Path, out_dir: Path, models=MODELS) -> dict:
    """A seed's results of record, small and without paths: per model the world summary, the realistic summaries
    and the corpora (null while not evaluated), and the training record (checkpoint extra + loss curve), written to
    out_dir/summary.json and out_dir/training.json -> the summary."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    m = run_dir / "metrics"
    summary, training = {}, {}
    for d in models:
        world = _read_json(m / f"eval_{d}.json")
        if world is None:
            raise SeedRecordError(f"{m / f'eval_{d}.json'} not found: evaluate {d} on the test split first "
                                  f"(chapter 08, evaluation.run.evaluate_defense)")
        real = _read_json(m / f"realistic_{d}.json")
        summary[d] = {"world": world["summary"], "world_cache_key": world.get("cache_key"),
                      "realistic": real["summary"] if real else None,
                      "realistic_cache_key": real.get("cache_key") if real else None,
                      "corpora": _corpora_summary(_read_json(corpora_path(run_dir, d)))}
        ckpt = _read_json(run_dir / "checkpoints" / d / "best_model" / "checkpoint.json") or {}
        log = read_train_log(RunPaths(run_dir), d)
        training[d] = {**{k: v for k, v in ckpt.get("extra", {}).items() if k != "base"},
                       "train_runtime_s": next((r["train_runtime"] for r in log if "train_runtime" in r), None),
                       "loss_curve": [{k: r[k] for k in r if k.startswith("loss") or k in ("step", "grad_norm",
                                                                                          "learning_rate")}
                                      for r in log if "loss" in r]}
    write_json(out_dir / "summary.json", summary)
    write_json(out_dir / "training.json", training)
    return summary


def _source_outcomes(items: list[dict], source: str) -> tuple[dict[str, bool], set[str]]:
    """One corpus's attacked items of an evaluation: item id -> attack succeeded, and the twin-passed ids."""
    ev = {"items": [i for i in items if i.get("source") == source]}
    return attack_outcomes(ev), twin_passed_items(ev)


def across(folders: dict[int, Path], models=MODELS, alpha: float = 0.05) -> dict:
    """The across-seed paired tests of every pair of `models` over the seed folders (seed -> run folder): world ASR
    over every seed (each seed's joint twin control), the realistic rows over the seeds whose realistic benchmarks
    exist for every model, each corpus's ASR over the seeds whose corpora exist for every model; each row by
    stats.paired.across_seeds (two-way cluster bootstrap over items and seeds, each seed's exact McNemar beside it),
    Holm over the whole table; ROUGE-L means per seed."""
    from causal_lib.evaluation import literature

    folders = {int(s): Path(f) for s, f in folders.items()}
    world = {s: {d: {"items": _read_jsonl(f / "metrics" / f"eval_{d}_items.jsonl")} for d in models}
             for s, f in folders.items()}
    real_seeds = [s for s, f in folders.items() if all((f / "metrics" / f"realistic_{d}.json").is_file() for d in models)]
    real = {s: {d: json.loads((folders[s] / "metrics" / f"realistic_{d}.json").read_text()) for d in models}
            for s in real_seeds}
    corpora_seeds = [s for s, f in folders.items() if all(corpora_path(f, d).is_file() for d in models)]
    corpora = {s: {d: json.loads(corpora_path(folders[s], d).read_text())["items"] for d in models}
               for s in corpora_seeds}
    sources = sorted({i["source"] for s in corpora_seeds for d in models for i in corpora[s][d]
                      if i.get("kind") == "injected" and i.get("source")})
    rows = []
    for a, b in itertools.combinations(models, 2):
        inel = {s: twin_passed_items(world[s][a]) | twin_passed_items(world[s][b]) for s in folders}
        rows.append({**paired.across_seeds(a, {s: attack_outcomes(world[s][a]) for s in folders},
                                           b, {s: attack_outcomes(world[s][b]) for s in folders}, ineligible=inel,
                                           alpha=alpha), "measure": "world ASR"})
        for src in sources:
            oa = {s: _source_outcomes(corpora[s][a], src) for s in corpora_seeds}
            ob = {s: _source_outcomes(corpora[s][b], src) for s in corpora_seeds}
            rows.append({**paired.across_seeds(a, {s: oa[s][0] for s in corpora_seeds},
                                               b, {s: ob[s][0] for s in corpora_seeds},
                                               ineligible={s: oa[s][1] | ob[s][1] for s in corpora_seeds},
                                               alpha=alpha), "measure": f"corpus {src} ASR"})
    if real_seeds:
        rows += literature.realistic_seed_paired(real, alpha=alpha)
    # Holm over the whole table, except rows without a single discordant item in any seed: conditional on the
    # discordant counts (as McNemar is) they cannot reject, so counting them would only weaken the others (Tarone's
    # rule for discrete tests, in its simplest case); they are shown, marked not tested
    tested = [r for r in rows if any(p["a_only"] + p["b_only"] for p in r["per_seed"])]
    for r in rows:
        r["p_holm"], r["significant"], r["tested"] = None, False, False
    for r, p_h in zip(tested, paired.holm([r["p_value"] for r in tested])):
        r["p_holm"], r["significant"], r["tested"] = p_h, bool(p_h < alpha), True
    util = {s: {d: sum(i["rouge_l"] for i in real[s][d]["items"]["utility"]) /
                max(len(real[s][d]["items"]["utility"]), 1) for d in models} for s in real_seeds}
    return {"seeds": sorted(folders), "realistic_seeds": sorted(real_seeds), "corpora_seeds": sorted(corpora_seeds),
            "tests": rows, "rouge_l_mean": util}


def _p(p_holm: float | None) -> str:
    return "not tested (no discordant item)" if p_holm is None else f"{p_holm:.3g}"


def test_lines(result: dict) -> list[str]:
    """One console line per test row."""
    return [f"{r['measure']:34s} {r['a']} - {r['b']}: {r['difference'] * 100:+.1f} pt [{r['lo'] * 100:+.1f}, "
            f"{r['hi'] * 100:+.1f}] seeds={r['seeds']} n={r['n_items']} Holm p={_p(r['p_holm'])} per seed "
            + "; ".join(f"{p['seed']}: {p['a_only']}/{p['b_only']}" for p in r["per_seed"])
            for r in result["tests"]]
