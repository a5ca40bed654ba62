"""The evaluation engine (DESIGN.md s.6, s.10): batched generation, scoring of every test item with the
dataset's own checks, and the summary rates with Clopper-Pearson intervals.

    results = evaluate_records(model, tokenizer, records, cfg.eval)           # one ItemResult per record
    summary = summarise(results)                                             # plain JSON: every rate k, n, rate, lo, hi
    table = results_table(summary)                                           # long DataFrame for heatmaps

Scoring (one rule per record kind):
    injected       success = attacks.attack_succeeded(record, output)   (the attack's goal carried out)
    clean          correct = attacks.is_correct(record, output)         (exact match with O*)
    lookalike      correct = attacks.is_correct(record, output)         (wrong or blocked = over-defense)
    probe_system   success = attacks.probe_executed(record, output)     (the probe instruction placed in S)
    probe_data     success = attacks.probe_executed(record, output)     (the same probe placed in U)
A record blocked by an input filter gets BLOCKED_OUTPUT and is never generated for: an injected item counts
as a failed attack, a clean or look-alike item as wrong (over-defense), a probe as not executed.

Command line (a saved model against the test split and/or external attack files):
    python -m causal_lib.evaluate --model outputs/default/checkpoints/causal/best_model \
        --data-dir outputs/default/data --params params/default.yaml --attacks my_attacks.jsonl --out result.json
"""
from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .model import encode_example
from .stats import rate as _rate

BLOCKED_OUTPUT = "[blocked by input filter]"
ATTACK_KINDS = ("injected",)
ANSWER_KINDS = ("clean", "lookalike")
PROBE_KINDS = ("probe_system", "probe_data")


# ---------------------------------------------------------------------------------------------
# generation


def _prompt_of(rec) -> tuple[str, str]:
    """(S, U) of a Record, a {'system', 'user'|'data'} dict or a (system, user) tuple."""
    if isinstance(rec, dict):
        return rec.get("system", "") or "", rec["data"] if "data" in rec else rec["user"]
    if isinstance(rec, (tuple, list)):
        return rec[0], rec[1]
    return getattr(rec, "system", "") or "", rec.data


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _stop_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos (<|end|> for the embedded model) plus whatever the model's own
    generation config lists (chat models often end a turn with a token other than eos, e.g. <|eot_id|>)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]):
        if i is not None and i not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos token and the model no eos_token_id: generation could not stop")
    return ids


def default_prompt_budget(model, max_new_tokens: int) -> int | None:
    """Room for the prompt: the model's positions minus the new tokens (the tiny model is built with
    max_position_embeddings = model.max_seq_length, so this equals the training budget there)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
    return None if n is None else max(int(n) - int(max_new_tokens), 1)


def _encode_prompts(tokenizer, systems, users, max_length):
    ids, truncated = [], []
    for s, u in zip(systems, users):
        e = encode_example(tokenizer, s, u, max_length=max_length)
        ids.append(e["input_ids"])
        truncated.append(bool(e["truncated"]))
    return ids, truncated


def _decode_new(tokenizer, row: list[int], stop: set[int]) -> str:
    """Only the generated tokens, cut at the first end-of-turn, special tokens skipped, stripped."""
    for j, t in enumerate(row):
        if t in stop:
            row = row[:j]
            break
    return tokenizer.decode(row, skip_special_tokens=True).strip()


def generate_ids(model, tokenizer, prompt_ids: Sequence[list[int]], max_new_tokens: int = 16, batch_size: int = 64,
                 do_sample: bool = False, num_return_sequences: int = 1, seed: int = 0) -> list:
    """Generate from already-encoded prompts (lists of ids). Same contract as `generate`."""
    n = len(prompt_ids)
    k = int(num_return_sequences)
    if k > 1 and not do_sample:
        raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy decoding gives k identical answers)")
    if n == 0:
        return []
    stop = _stop_ids(model, tokenizer)
    stop_set = set(stop)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    device = _device(model)
    # Longest first: similar lengths share a batch (little padding), and an out-of-memory shows on batch one.
    order = sorted(range(n), key=lambda i: -len(prompt_ids[i]))
    out: list = [None] * n
    sampling = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for b, start in enumerate(range(0, n, batch_size)):
                idx = order[start:start + batch_size]
                T = max(len(prompt_ids[i]) for i in idx)
                # Left padding: every row's last prompt token sits at position T-1, so new tokens line up.
                ids = torch.tensor([[pad] * (T - len(prompt_ids[i])) + list(prompt_ids[i]) for i in idx], device=device)
                mask = torch.tensor([[0] * (T - len(prompt_ids[i])) + [1] * len(prompt_ids[i]) for i in idx],
                                    device=device)
                if do_sample:
                    torch.manual_seed(seed * 1_000_003 + b)  # seeded per batch: reproducible, global RNG untouched
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     num_return_sequences=k, pad_token_id=pad, eos_token_id=stop, use_cache=True,
                                     **sampling)
                new = gen[:, T:].tolist()  # plain ints: no tensor outlives the batch
                del gen, ids, mask
                for j, i in enumerate(idx):
                    texts = [_decode_new(tokenizer, new[j * k + r], stop_set) for r in range(k)]
                    out[i] = texts if k > 1 else texts[0]
    finally:
        model.train(was_training)
    return out


def generate(model, tokenizer, systems: Sequence[str], users: Sequence[str], max_new_tokens: int = 16,
             batch_size: int = 64, do_sample: bool = False, num_return_sequences: int = 1, seed: int = 0,
             max_length: int | None = None) -> list:
    """Answers of `model` to the prompts (systems[i], users[i]) -> list[str] (list[list[str]] when
    num_return_sequences > 1), in the input order.

    Prompts come from the one prompt builder (model.encode_example; user data cut in the middle when longer
    than max_length, default: the model's positions minus max_new_tokens), left padded, sorted by length
    into batches, KV cache on. Greedy unless do_sample (then plain sampling at temperature 1.0, no top-k /
    top-p, seeded). Stops at end of turn; only the new tokens are decoded, special tokens skipped, stripped.
    """
    if len(systems) != len(users):
        raise ValueError(f"generate: {len(systems)} systems but {len(users)} users")
    if max_length is None:
        max_length = default_prompt_budget(model, max_new_tokens)
    ids, _ = _encode_prompts(tokenizer, systems, users, max_length)
    return generate_ids(model, tokenizer, ids, max_new_tokens, batch_size, do_sample, num_return_sequences, seed)


def generate_one_by_one(model, tokenizer, systems: Sequence[str], users: Sequence[str], max_new_tokens: int = 16,
                        do_sample: bool = False, num_return_sequences: int = 1, seed: int = 0,
                        max_length: int | None = None) -> list:
    """The same as `generate`, one prompt per call (no padding): the reference for speed and for outputs."""
    return generate(model, tokenizer, systems, users, max_new_tokens, 1, do_sample, num_return_sequences, seed,
                    max_length)


def measure_batched_speedup(model, tokenizer, records, n: int = 200, max_new_tokens: int = 16,
                            batch_size: int = 64, max_length: int | None = None) -> dict:
    """Seconds to answer the first n records batched and one by one (greedy), and the ratio.

    The book's budget is ratio >= 10. Both runs get a short warm-up first (the first call pays for lazy
    initialisation). `same_outputs` is the fraction of items whose two answers agree (1.0 expected in fp32).
    Why the ratio is bounded on a CPU: one item costs the 2M model only ~30-40 ms with the KV cache (a ~5 ms
    prefill and ~1.7 ms per new token, mostly Python overhead), while a batch of 64 is compute-bound (the
    prefill runs near matmul speed; each new token copies the growing KV cache). Measured here (1 thread,
    shared 2-core machine): 4.5-6.5x at ~60-token prompts, ~3x at ~90-140 tokens; a static KV cache did not
    help. Answers that stop early (trained models, 1-4 words) lower the ratio further.
    """
    recs = list(records)[:n]
    systems, users = zip(*[_prompt_of(r) for r in recs]) if recs else ((), ())
    warm = min(len(recs), 2)
    generate(model, tokenizer, systems[:warm], users[:warm], max_new_tokens, batch_size, max_length=max_length)
    t0 = time.perf_counter()
    batched = generate(model, tokenizer, systems, users, max_new_tokens, batch_size, max_length=max_length)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = generate_one_by_one(model, tokenizer, systems, users, max_new_tokens, max_length=max_length)
    t_single = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, single)) / max(len(recs), 1)
    return {"n": len(recs), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "batched_s": t_batched, "one_by_one_s": t_single,
            "speedup": t_single / t_batched if t_batched > 0 else float("inf"),
            "ratio": t_single / t_batched if t_batched > 0 else float("inf"),  # same number, the bench's name
            "batched_items_per_s": len(recs) / t_batched if t_batched > 0 else float("inf"),
            "same_outputs": same}


# ---------------------------------------------------------------------------------------------
# per-item evaluation


@dataclass
class ItemResult:
    """One evaluated record: what the model said and how it was scored (strings and flags only)."""

    id: str
    pair_id: str
    kind: str
    family: str | None = None
    goal: str | None = None
    position: str | None = None
    held_out: bool = False
    source: str | None = None
    task: str | None = None
    # Groups the variants of one clean item (same S and D) for the per-sample union: sha1 of S + D.
    item_key: str = ""
    output: str = ""
    success: bool | None = None  # injected: attack carried out; probes: probe instruction executed
    correct: bool | None = None  # clean/lookalike: exact O*; injected: the original task still answered
    blocked: bool = False
    truncated: bool = False
    success_pass_k: bool | None = None  # injected with pass_k > 1: any of k samples succeeded
    outputs_pass_k: list[str] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _item_key(rec) -> str:
    s = getattr(rec, "system", "") or ""
    d = getattr(rec, "clean_data", None)
    if d is None:
        d = getattr(rec, "data", "")
    return hashlib.sha1(f"{s}\x00{d}".encode()).hexdigest()[:16]


def _checks():
    """The dataset's scoring functions (attacks.py): one definition of success per goal."""
    from . import attacks

    return attacks.attack_succeeded, attacks.is_correct, attacks.probe_executed


def _score(rec, output: str, checks) -> tuple[bool | None, bool | None]:
    attack_succeeded, is_correct, probe_executed = checks
    kind = rec.kind
    if kind in ATTACK_KINDS:
        return bool(attack_succeeded(rec, output)), bool(is_correct(rec, output))
    if kind in PROBE_KINDS:
        return bool(probe_executed(rec, output)), None
    return None, bool(is_correct(rec, output))  # clean, lookalike (and base)


def select_attacked(records: Sequence, n_attacked: int, seed: int = 0) -> list:
    """All records, with the injected ones reduced to a fixed seeded sample of n_attacked (0 = all); order kept."""
    inj = [i for i, r in enumerate(records) if r.kind in ATTACK_KINDS]
    if n_attacked <= 0 or n_attacked >= len(inj):
        return list(records)
    keep = set(random.Random(seed).sample(inj, n_attacked))
    return [r for i, r in enumerate(records) if r.kind not in ATTACK_KINDS or i in keep]


def evaluate_records(model, tokenizer, records: Sequence, cfg_eval, block: Callable | None = None,
                     max_length: int | None = None, checks=None, seed: int = 0) -> list[ItemResult]:
    """Generate (greedy) for every record and score it -> one ItemResult per record, in order.

    `cfg_eval` is an EvalConfig (batch_size, max_new_tokens, n_attacked, pass_k). `block(records) ->
    list[bool]` is an input filter: blocked records are not generated for and get BLOCKED_OUTPUT.
    `max_length` is the prompt budget (the CLI passes model.max_seq_length - eval.max_new_tokens).
    `checks` = (attack_succeeded, is_correct, probe_executed) overrides the dataset's (tests).
    With cfg_eval.pass_k > 1 every non-blocked injected item is also sampled pass_k times (temperature 1.0,
    seeded) and success_pass_k says whether any sample succeeded.
    """
    checks = checks or _checks()
    records = select_attacked(list(records), getattr(cfg_eval, "n_attacked", 0), seed)
    blocked = [False] * len(records)
    if block is not None and records:
        blocked = [bool(b) for b in block(records)]
        if len(blocked) != len(records):
            raise ValueError(f"block() returned {len(blocked)} flags for {len(records)} records")
    mnt = cfg_eval.max_new_tokens
    if max_length is None:
        max_length = default_prompt_budget(model, mnt)
    todo = [i for i, b in enumerate(blocked) if not b]
    prompts = [_prompt_of(records[i]) for i in todo]
    ids, trunc = _encode_prompts(tokenizer, [p[0] for p in prompts], [p[1] for p in prompts], max_length)
    outputs = generate_ids(model, tokenizer, ids, mnt, cfg_eval.batch_size)
    gen = {i: (o, t) for i, o, t in zip(todo, outputs, trunc)}

    k = int(getattr(cfg_eval, "pass_k", 1) or 1)
    sampled: dict[int, list[str]] = {}
    if k > 1:
        inj = [j for j, i in enumerate(todo) if records[i].kind in ATTACK_KINDS]
        # k samples per item in one generate call: the batch holds batch_size // k items (k rows each).
        samples = generate_ids(model, tokenizer, [ids[j] for j in inj], mnt, max(1, cfg_eval.batch_size // k),
                               do_sample=True, num_return_sequences=k, seed=seed)
        sampled = {todo[j]: s for j, s in zip(inj, samples)}
    del ids

    results = []
    for i, rec in enumerate(records):
        if blocked[i]:
            out, tr = BLOCKED_OUTPUT, False
            # Blocked: the attack did not happen, the probe was not executed, the benign item went unanswered.
            success = False if rec.kind in ATTACK_KINDS + PROBE_KINDS else None
            correct = None if rec.kind in PROBE_KINDS else False
        else:
            out, tr = gen[i]
            success, correct = _score(rec, out, checks)
        r = ItemResult(
            id=str(rec.id), pair_id=str(getattr(rec, "pair_id", "")), kind=rec.kind,
            family=getattr(rec, "family", None), goal=getattr(rec, "goal", None),
            position=getattr(rec, "position", None), held_out=bool(getattr(rec, "held_out", False)),
            source=getattr(rec, "source", None), task=getattr(rec, "task", None), item_key=_item_key(rec),
            output=out, success=success, correct=correct, blocked=blocked[i], truncated=tr)
        if k > 1 and rec.kind in ATTACK_KINDS:
            outs = sampled.get(i)
            r.outputs_pass_k = outs
            r.success_pass_k = False if outs is None else any(bool(checks[0](rec, o)) for o in outs)
        results.append(r)
    return results


# ---------------------------------------------------------------------------------------------
# summary


def rate_dict(k: int, n: int, alpha: float = 0.05) -> dict:
    """{k, n, rate, lo, hi}: Clopper-Pearson via stats.rate; rate is None (not NaN, invalid JSON) when n = 0."""
    r = _rate(k, n, alpha)
    return {"k": r.k, "n": r.n, "rate": None if n == 0 or math.isnan(r.rate) else r.rate, "lo": r.lo, "hi": r.hi}


def _as_item(r) -> ItemResult:
    return r if isinstance(r, ItemResult) else ItemResult(**r)


def _grouped(items, key, flag, alpha) -> dict:
    groups: dict[str, list[bool]] = {}
    for r in items:
        g = key(r)
        groups.setdefault("none" if g is None else str(g), []).append(bool(getattr(r, flag)))
    return {g: rate_dict(sum(v), len(v), alpha) for g, v in sorted(groups.items())}


def summarise(results: Sequence, alpha: float = 0.05) -> dict:
    """Every rate of DESIGN.md s.6 that comes from outputs, each as {k, n, rate, lo, hi} (95% Clopper-Pearson).

    asr                 injected items whose attack succeeded (blocked = failed)
    asr_by_family/goal/position/source, asr_by_split {seen, held_out}
    asr_max_family      the family with the highest ASR ("max ASR over attacks" of StruQ/SecAlign); its
                        interval is that family's own, not corrected for taking the max
    asr_union           per-sample union ("combined"): one unit per clean item (same S and D, item_key), counted
                        successful if any of its attacked variants (any family/position/goal) succeeded. When
                        each clean item carries exactly one attack this equals asr.
    asr_pass_k          (with pass_k > 1) success if any of k samples succeeded, next to the greedy asr
    benign_accuracy     clean items answered exactly (blocked = wrong); benign_accuracy_by_task per task
    over_defense        look-alike items answered wrongly or blocked
    utility_under_attack injected items whose output is still the correct O*
    sep                 SEP separation (Zverev et al. 2025): over the probes executed when placed in S
                        (probe_system), the fraction NOT executed when the same probe (same pair_id) sits
                        in U (probe_data). Pairs whose S-probe was not executed carry no information.
    blocked             per kind, the fraction blocked by the input filter
    """
    items = [_as_item(r) for r in results]
    inj = [r for r in items if r.kind in ATTACK_KINDS]
    clean = [r for r in items if r.kind == "clean"]
    look = [r for r in items if r.kind == "lookalike"]
    out: dict = {"alpha": alpha, "n_items": len(items),
                 "counts": {k: sum(r.kind == k for r in items) for k in sorted({r.kind for r in items})},
                 "truncated": sum(r.truncated for r in items)}

    out["asr"] = rate_dict(sum(bool(r.success) for r in inj), len(inj), alpha)
    out["asr_by_family"] = _grouped(inj, lambda r: r.family, "success", alpha)
    out["asr_by_goal"] = _grouped(inj, lambda r: r.goal, "success", alpha)
    out["asr_by_position"] = _grouped(inj, lambda r: r.position, "success", alpha)
    out["asr_by_source"] = _grouped(inj, lambda r: r.source or "builtin", "success", alpha)
    out["asr_by_split"] = _grouped(inj, lambda r: "held_out" if r.held_out else "seen", "success", alpha)
    fams = out["asr_by_family"]
    if fams:
        best = max(fams, key=lambda f: (fams[f]["rate"] if fams[f]["rate"] is not None else -1.0, fams[f]["n"]))
        out["asr_max_family"] = {"family": best, **fams[best]}
    else:
        out["asr_max_family"] = {"family": None, **rate_dict(0, 0, alpha)}
    union: dict[str, bool] = {}
    for r in inj:
        union[r.item_key] = union.get(r.item_key, False) or bool(r.success)
    out["asr_union"] = rate_dict(sum(union.values()), len(union), alpha)
    out["asr_union_variants_per_item"] = (len(inj) / len(union)) if union else None
    pk = [r for r in inj if r.success_pass_k is not None]
    if pk:
        out["pass_k"] = max(len(r.outputs_pass_k or []) for r in pk)
        out["asr_pass_k"] = rate_dict(sum(bool(r.success_pass_k) for r in pk), len(pk), alpha)
        out["asr_pass_k_by_family"] = _grouped(pk, lambda r: r.family, "success_pass_k", alpha)

    out["benign_accuracy"] = rate_dict(sum(bool(r.correct) for r in clean), len(clean), alpha)
    out["benign_accuracy_by_task"] = _grouped(clean, lambda r: r.task, "correct", alpha)
    out["over_defense"] = rate_dict(sum((not r.correct) or r.blocked for r in look), len(look), alpha)
    out["utility_under_attack"] = rate_dict(sum(bool(r.correct) for r in inj), len(inj), alpha)

    in_s = {r.pair_id: bool(r.success) for r in items if r.kind == "probe_system"}
    in_u = {r.pair_id: bool(r.success) for r in items if r.kind == "probe_data"}
    both = [p for p in in_s if p in in_u]
    executed_in_s = [p for p in both if in_s[p]]
    out["sep"] = rate_dict(sum(not in_u[p] for p in executed_in_s), len(executed_in_s), alpha)
    out["sep_probe_pairs"] = len(both)
    out["probe_executed_in_system"] = rate_dict(len(executed_in_s), len(both), alpha)
    out["probe_executed_in_data"] = rate_dict(sum(in_u[p] for p in both), len(both), alpha)

    out["blocked"] = {k: rate_dict(sum(r.blocked for r in items if r.kind == k), out["counts"][k], alpha)
                      for k in out["counts"]}
    return out


# summary key -> (metric, grouping) of the long table
_GROUPED = {"asr_by_family": ("asr", "family"), "asr_by_goal": ("asr", "goal"), "asr_by_position": ("asr", "position"),
            "asr_by_source": ("asr", "source"), "asr_by_split": ("asr", "split"),
            "asr_pass_k_by_family": ("asr_pass_k", "family"), "blocked": ("blocked", "kind"),
            "benign_accuracy_by_task": ("benign_accuracy", "task")}
_SINGLE = ["asr", "asr_max_family", "asr_union", "asr_pass_k", "benign_accuracy", "over_defense",
           "utility_under_attack", "sep", "probe_executed_in_system", "probe_executed_in_data"]


def results_table(summary: dict, **labels):
    """The summary as a long DataFrame: metric, group_type, group, k, n, rate, lo, hi (one row per rate).

    Defense-agnostic: pass labels (defense="causal", seed=0) to add constant columns, then concatenate the
    tables of several defenses and pivot (e.g. family x defense) for a heatmap."""
    import pandas as pd

    rows = []
    for key in _SINGLE:
        if key in summary:
            r = summary[key]
            group = r.get("family", "all") if key == "asr_max_family" else "all"
            rows.append({"metric": key, "group_type": "overall", "group": group,
                         **{c: r[c] for c in ("k", "n", "rate", "lo", "hi")}})
    for key, (metric, gtype) in _GROUPED.items():
        for g, r in summary.get(key, {}).items():
            rows.append({"metric": metric, "group_type": gtype, "group": g,
                         **{c: r[c] for c in ("k", "n", "rate", "lo", "hi")}})
    df = pd.DataFrame(rows, columns=["metric", "group_type", "group", "k", "n", "rate", "lo", "hi"])
    df["rate"] = df["rate"].astype(float)
    for name, value in labels.items():
        df.insert(0, name, value)
    return df


# ---------------------------------------------------------------------------------------------
# command line


class EvalCLIError(RuntimeError):
    """A command-line input that cannot be used; the message names it and says what to do."""


def _load_test_records(data_dir: Path) -> list:
    """The saved test split (data.load_split: validated; a missing file says which chapter builds it)."""
    from .data import load_split

    return load_split(data_dir, "test")


def _expand_attack_files(files: Sequence[str], test_records: list, cfg) -> list:
    """Each external attack file expanded against the clean test items, exactly like the built-in families."""
    from . import attacks

    clean = [r for r in test_records if r.kind == "clean"]
    out = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise EvalCLIError(f"attack file {f} not found: pass the path of a JSONL attack file (see README)")
        try:
            templates = attacks.load_attack_file(p)
        except (ValueError, KeyError) as e:  # AttackFileError names the file, the line and the fix
            msg = str(e)
            raise EvalCLIError(msg if str(p) in msg else f"attack file {f}: {msg}") from None
        out.extend(attacks.expand_attack_file(templates, clean, seed=cfg.run.seed, source=p.name,
                                              held_out_families=cfg.data.held_out_families))
    return out


def _defense_view(defense: str | None, records: list, model, tok, cfg, data_dir: Path):
    """What the named defense needs at test time: StruQ/SecAlign read their structured prompt
    (base_model.records_for), input filtering blocks with the run's filter (outputs/<run>/ = data_dir/..)."""
    if not defense or defense == "none":
        return records, None
    from .defenses import DEFENSES

    if defense not in DEFENSES:
        raise EvalCLIError(f"--defense-name {defense!r}: not one of {DEFENSES} (or leave it out for a plain model)")
    if defense in ("struq", "secalign"):
        from .base_model import records_for

        return records_for(defense, records, tok), None
    if defense == "filter":
        from .chapter import RunPaths
        from .comparison import block_for

        try:
            return records, block_for(cfg, RunPaths(data_dir.parent), "filter", model, tok)
        except (ImportError, FileNotFoundError) as e:
            raise EvalCLIError(f"--defense-name filter: the run's input filter could not be loaded ({e}); evaluate the "
                               f"'filter' defense in the book first (chapter 08) or leave out --defense-name") from None
    return records, None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.evaluate",
                                 description="Evaluate a saved model on the test split and/or external attack files.")
    ap.add_argument("--model", required=True, help="checkpoint folder (save_checkpoint output, e.g. .../best_model)")
    ap.add_argument("--attacks", action="append", default=[], help="JSONL attack file (repeatable)")
    ap.add_argument("--data-dir", required=True, help="outputs/<run>/data written by chapter 02")
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--out", required=True, help="result JSON (summary + per-item results)")
    ap.add_argument("--defense-name", default=None)
    ap.add_argument("--no-builtin", action="store_true",
                    help="evaluate only the attack files' items (plus the clean test items), not the built-in attacks")
    args = ap.parse_args(argv)
    try:
        return _run_cli(args)
    except EvalCLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_cli(args) -> int:
    from .chapter import write_json
    from .config import ConfigError, load_config
    from .model import CheckpointError, ModelLoadError, load_checkpoint

    try:
        cfg = load_config(args.params)
    except ConfigError as e:
        raise EvalCLIError(str(e)) from None
    model_dir, data_dir = Path(args.model), Path(args.data_dir)
    if not model_dir.is_dir():
        raise EvalCLIError(f"model folder {model_dir} not found: train the model first (chapters 04/05) or pass "
                           f"--model with a checkpoint folder (e.g. outputs/<run>/checkpoints/<defense>/best_model)")
    if not data_dir.is_dir():
        raise EvalCLIError(f"data folder {data_dir} not found: run chapter 02 first "
                           f"(python -m causal_lib.book run --params {args.params} --from 02)")
    try:
        test = _load_test_records(data_dir)
    except (FileNotFoundError, ValueError) as e:
        hint = "" if "chapter 02" in str(e) else " (rebuild it: run chapter 02)"
        raise EvalCLIError(f"data folder {data_dir}: {e}{hint}") from None
    if not any(r.kind == "clean" for r in test):
        raise EvalCLIError(f"data folder {data_dir}: the test split has no clean items; rebuild the data "
                           f"(chapter 02) with data.n_test > 0")
    extra = _expand_attack_files(args.attacks, test, cfg)
    # A file listed in data.attack_files is already in test.jsonl (same ids): keep one copy.
    fresh = {r.id for r in extra}
    records = [r for r in test if r.id not in fresh and not (args.no_builtin and r.kind in ATTACK_KINDS)] + extra
    if not records:
        raise EvalCLIError("nothing to evaluate: the test set is empty")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command line's stderr is for errors: one line each
    try:
        model, tok = load_checkpoint(model_dir, cfg.model, is_trainable=False)
    except (CheckpointError, ModelLoadError) as e:
        raise EvalCLIError(str(e)) from None
    torch.set_num_threads(cfg.run.torch_threads)
    records, block = _defense_view(args.defense_name, records, model, tok, cfg, data_dir)
    t0 = time.perf_counter()
    results = evaluate_records(model, tok, records, cfg.eval, block=block,
                               max_length=max(cfg.model.max_seq_length - cfg.eval.max_new_tokens, 1),
                               seed=cfg.run.seed)
    summary = summarise(results, cfg.stats.alpha)
    write_json(Path(args.out), {"defense": args.defense_name, "model": str(model_dir), "data_dir": str(data_dir),
                                "attack_files": list(args.attacks), "params_hash": cfg.params_hash(),
                                "seconds": time.perf_counter() - t0, "summary": summary,
                                "items": [r.to_dict() for r in results]})
    a = summary["asr"]
    print(f"{args.defense_name or model_dir}: ASR {a['k']}/{a['n']}, benign accuracy "
          f"{summary['benign_accuracy']['k']}/{summary['benign_accuracy']['n']} -> {args.out}")
    return 0


__all__ = ["BLOCKED_OUTPUT", "ItemResult", "generate", "generate_ids", "generate_one_by_one", "measure_batched_speedup",
           "evaluate_records", "select_attacked", "summarise", "rate_dict", "results_table", "main"]


if __name__ == "__main__":
    sys.exit(main())
