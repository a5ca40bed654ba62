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
    python -m causal_lib.evaluation --model outputs/default/checkpoints/causal/best_model \
        --data-dir outputs/default/data --params params/default.yaml --attacks my_attacks.jsonl --out result.json
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from causal_lib.book import progress
from causal_lib.models.prompts import encode_example, prompt_of

BLOCKED_OUTPUT = "[blocked by input filter]"


ATTACK_KINDS = ("injected",)


ANSWER_KINDS = ("clean", "lookalike")


PROBE_KINDS = ("probe_system", "probe_data")


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


def encode_prompts(tokenizer, systems, users, max_length):
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
    t0 = time.time()
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
                done = min(start + batch_size, n)
                progress.report(f"generate (prompts): {progress.eta(done, n, time.time() - t0)}", key="generate")
    finally:
        model.train(was_training)
    return out


def generate(model, tokenizer, systems: Sequence[str], users: Sequence[str], max_new_tokens: int = 16,
             batch_size: int = 64, do_sample: bool = False, num_return_sequences: int = 1, seed: int = 0,
             max_length: int | None = None) -> list:
    """Answers of `model` to the prompts (systems[i], users[i]) -> list[str] (list[list[str]] when
    num_return_sequences > 1), in the input order.

    Prompts come from the one prompt builder (models.prompts.encode_example; user data cut in the middle when longer
    than max_length, default: the model's positions minus max_new_tokens), left padded, sorted by length
    into batches, KV cache on. Greedy unless do_sample (then plain sampling at temperature 1.0, no top-k /
    top-p, seeded). Stops at end of turn; only the new tokens are decoded, special tokens skipped, stripped.
    """
    if len(systems) != len(users):
        raise ValueError(f"generate: {len(systems)} systems but {len(users)} users")
    if max_length is None:
        max_length = default_prompt_budget(model, max_new_tokens)
    ids, _ = encode_prompts(tokenizer, systems, users, max_length)
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
    systems, users = zip(*[prompt_of(r) for r in recs]) if recs else ((), ())
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
