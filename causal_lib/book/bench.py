"""The book's performance budgets, measured side by side against reference implementations in one process.

    python -m causal_lib.book.bench [--quick]      # or: make bench
Writes outputs/bench/bench.json and outputs/bench/bench.md. Rows that need a full book run (wall clock,
peak memory) are read from the last outputs/default and outputs/smoke runs and say so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from types import SimpleNamespace

from causal_lib.defenses.causal import causal_objective
from causal_lib.models.generate import measure_batched_speedup
from causal_lib.models.load import build_tiny_model
from causal_lib.models.prompts import train_tokenizer
from causal_lib.training.examples import make_collator
from causal_lib.training.losses import task_loss
from causal_lib.training.trainer import SFTTrainer, forward_for_labels
from causal_lib.stats.hsic import hsic_test, median_bandwidth

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np
import torch

from causal_lib.book.reports import markdown_table
from causal_lib.config import PROJECT_ROOT, Config

BUDGETS = {
    "book_default_wall_s": 2700, "peak_rss_gb": 5.5, "book_smoke_wall_s": 300, "causal_vs_ce_step": 1.8,
    "trainer_vs_loop_step": 1.05, "hsic_seconds": 0.3, "hsic_p_diff": 0.02, "batched_speedup": 10.0,
    "gcg_batched_speedup": 3.0,
}


def _tiny_model(vocab: int = 2048, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    t = Config().model.tiny
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
                      num_attention_heads=t.num_attention_heads, intermediate_size=t.intermediate_size,
                      max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(cfg)


def _pair_batch(B=32, T=64, vocab=2048, n_z=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda: torch.randint(2, vocab, (B, T), generator=g)
    labels = lambda x: torch.where(torch.arange(T) >= T - 8, x, torch.full_like(x, -100))
    c, i = ids(), ids()
    return {"clean_input_ids": c, "clean_attention_mask": torch.ones_like(c), "clean_labels": labels(c),
            "clean_prompt_length": torch.full((B,), T - 8), "injected_input_ids": i,
            "injected_attention_mask": torch.ones_like(i), "injected_labels": labels(i),
            "injected_prompt_length": torch.full((B,), T - 8),
            "z": torch.nn.functional.one_hot(torch.randint(0, n_z, (B,), generator=g), n_z).float(),
            "s_group": torch.randint(0, 4, (B,), generator=g)}


def _time(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def bench_causal_step(steps: int = 10) -> dict:
    """One causal training step (no-grad clean pass + injected pass + three losses + backward + AdamW)
    vs one plain cross-entropy step on the injected half, same model and batch."""

    cfg = Config()
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = _pair_batch()

    def ce():  # the SFT step as training runs it (logits on the response window, like the causal step)
        out, labels = forward_for_labels(model, batch["injected_input_ids"], batch["injected_attention_mask"],
                                         batch["injected_labels"])
        task_loss(out.logits, labels).backward()
        opt.step(); opt.zero_grad()

    def causal():
        loss, _, _ = causal_objective(model, batch, cfg)
        loss.backward()
        opt.step(); opt.zero_grad()

    t_ce, t_causal = _time(ce, steps), _time(causal, steps)
    return {"ce_step_s": t_ce, "causal_step_s": t_causal, "ratio": t_causal / t_ce}


def bench_trainer_step(steps: int = 30) -> dict:
    """HF Trainer (SFTTrainer) step vs a plain torch loop step, same model, data, optimizer and batch size; both
    timed as the mean interval between step ends (the Trainer's set-up before its first step is not a step)."""
    from transformers import TrainerCallback, TrainingArguments


    B, T = 32, 64
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(2, 2048, (T,), generator=g).tolist()} for _ in range(B * (steps + 2))]
    for d in data:
        d["labels"] = [-100] * (T - 8) + d["input_ids"][-8:]
    collate = make_collator(0)

    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [collate(data[i:i + B]) for i in range(0, len(data), B)]

    def per_step(stamps):  # mean interval between step ends: set-up and the first step are not steps
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    def loop():
        stamps = []
        for b in batches[:steps]:  # the same forward as SFTTrainer.compute_loss
            out, labels = forward_for_labels(model, b["input_ids"], b["attention_mask"], b["labels"])
            task_loss(out.logits, labels).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(); opt.zero_grad()
            stamps.append(time.perf_counter())
        return per_step(stamps)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.stamps = []

        def on_step_end(self, args, state, control, **kw):
            self.stamps.append(time.perf_counter())

    loop()  # warm-up
    t_loop = loop()
    model = _tiny_model()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=B, learning_rate=1e-4,
                                 report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                 dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
                                 max_grad_norm=1.0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, data_collator=collate)
        trainer.train()  # includes set-up; measure a second run of the same steps
        model2 = _tiny_model()
        clock = StepClock()
        trainer = SFTTrainer(model=model2, args=args, train_dataset=data, data_collator=collate, callbacks=[clock])
        trainer.train()
        t_trainer = per_step(clock.stamps)
    return {"loop_step_s": t_loop, "trainer_step_s": t_trainer, "ratio": t_trainer / t_loop}


def bench_hsic(n: int = 2000, d: int = 64) -> dict:
    """Our gamma-approximation HSIC at n=2000, d=64 vs hyppo's Hsic on the same data (same Gaussian kernel
    bandwidths, gamma null) for the p-value agreement."""

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d))
    Y = X[:, :4] @ rng.standard_normal((4, 2)) * 0.05 + rng.standard_normal((n, 2))
    hsic_test(X[:100], Y[:100], method="gamma")  # warm-up: lazy imports are not the test's cost
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ours = hsic_test(X, Y, method="gamma")
        times.append(time.perf_counter() - t0)
    t_ours = float(np.median(times))  # median of 3 calls
    row = {"seconds": t_ours, "p_ours": ours.p_value}
    try:
        from hyppo.independence import Hsic

        sx, sy = median_bandwidth(X), median_bandwidth(Y)
        # hyppo's gaussian kernel is exp(-gamma ||x - y||^2): gamma = 1 / (2 sigma^2)
        t0 = time.perf_counter()
        stat, p = Hsic(compute_kernel="gaussian", gamma=1.0 / (2 * sx * sx)).test(X, Y, auto=False, reps=1000)
        row.update(p_hyppo=float(p), hyppo_seconds=time.perf_counter() - t0, p_diff=abs(float(p) - ours.p_value))
    except Exception as e:  # noqa: BLE001 - hyppo missing or its API changed: say so, keep the row
        row.update(p_hyppo=None, p_diff=None, hyppo_error=f"{type(e).__name__}: {e}")
    return row


def bench_generation(n: int = 200) -> dict:
    words = "the city name order item price count first last review good bad record email list".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 40)) for _ in range(300)]
    tok = train_tokenizer(texts, vocab_size=512)
    cfg = Config()
    model = build_tiny_model(cfg.model, tok)
    recs = [SimpleNamespace(system="Tell me the first item.", data=t, kind="clean") for t in texts[:n]]
    return measure_batched_speedup(model, tok, recs, n=n, max_new_tokens=16)


def bench_gcg_candidates(n_candidates: int = 128, repeat: int = 3) -> dict:
    """Candidates scored per second by GCG's scorer (evaluation.gcg.CandidateScorer): batched with the shared prefix's
    keys/values computed once, against a naive loop of one full forward per candidate, on the same 10-token
    candidates of a shipped-base-sized model (~60-token prompt, 4-token target)."""
    from causal_lib.evaluation.gcg import CandidateScorer

    model = _tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    left, tail = torch.randint(5, 2000, (48,), generator=g), torch.randint(5, 2000, (10,), generator=g)
    target = torch.randint(5, 2000, (4,), generator=g)
    cands = torch.randint(5, 2000, (n_candidates, 10), generator=g)
    scorer = CandidateScorer(model, left, torch.cat([tail, target]), target)
    cached = scorer.enable_prefix_cache(cands[0])

    def batched():
        scorer.losses(cands, batch=64)

    def naive():
        for c in cands:
            scorer.losses(c[None], use_prefix=False, batch=1)

    t_b = _time(batched, repeat, warmup=1)
    t_n = _time(naive, 1, warmup=0)
    return {"batched_per_s": n_candidates / t_b, "naive_per_s": n_candidates / t_n, "ratio": t_n / t_b,
            "prefix_cache": cached, "n_candidates": n_candidates}


def _book_rows() -> dict:
    """The last default (SmolLM2), tiny and smoke books' wall time, peak memory and each chapter run's time."""
    out = {}
    for run in ("default", "tiny", "smoke"):
        p = PROJECT_ROOT / "outputs" / run / "metrics" / "chapters.json"
        if p.exists():
            ch = json.loads(p.read_text())
            out[run] = {"wall_s": sum(c.get("wall_s", 0) for c in ch.values()),
                        "peak_rss_gb": max(c.get("peak_rss_gb", 0) for c in ch.values()),
                        "complete": all(c.get("status") == "ok" for c in ch.values()), "chapters": len(ch),
                        "chapter_s": {k: round(c.get("wall_s", 0), 1) for k, c in ch.items()}}
    return out


def chapter_rows(book: dict) -> list[dict]:
    """One row per chapter run of the last default book: where its time goes (issue: <= 45 min on 2 cores)."""
    d = book.get("default")
    if not d:
        return []
    total = d["wall_s"] or 1.0
    return [{"chapter": k, "seconds": f"{v:.0f}", "share": f"{v / total:.0%}"}
            for k, v in sorted(d["chapter_s"].items(), key=lambda kv: -kv[1])]


def run_bench(quick: bool = False) -> dict:
    torch.set_num_threads(2)
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__}}
    res["causal_step"] = bench_causal_step(5 if quick else 10)
    res["trainer_step"] = bench_trainer_step(10 if quick else 30)
    res["hsic"] = bench_hsic()
    res["generation"] = bench_generation(100 if quick else 200)
    res["gcg"] = bench_gcg_candidates(64 if quick else 128)
    res["book"] = _book_rows()
    b = res["book"]
    gen = res["generation"]
    speed = gen.get("ratio") or gen.get("speedup")
    rows = [
        {"figure": "whole book, params/default.yaml (SmolLM2)", "measured": f"{b['default']['wall_s'] / 60:.1f} min" if "default" in b else "no run yet (make book)",
         "budget": "<= 45 min", "ok": b["default"]["wall_s"] <= BUDGETS["book_default_wall_s"] if "default" in b else None},
        {"figure": "peak RSS of any chapter (default run)", "measured": f"{b['default']['peak_rss_gb']:.2f} GB" if "default" in b else "no run yet",
         "budget": "<= 5.5 GB", "ok": b["default"]["peak_rss_gb"] <= BUDGETS["peak_rss_gb"] if "default" in b else None},
        {"figure": "book on params/smoke.yaml", "measured": f"{b['smoke']['wall_s'] / 60:.1f} min" if "smoke" in b else "no run yet (make smoke)",
         "budget": "<= 5 min", "ok": b["smoke"]["wall_s"] <= BUDGETS["book_smoke_wall_s"] if "smoke" in b else None},
        {"figure": "causal step / cross-entropy step", "measured": f"{res['causal_step']['ratio']:.2f}x "
         f"({res['causal_step']['causal_step_s'] * 1000:.0f} vs {res['causal_step']['ce_step_s'] * 1000:.0f} ms)",
         "budget": "<= 1.8x", "ok": res["causal_step"]["ratio"] <= BUDGETS["causal_vs_ce_step"]},
        {"figure": "HF Trainer step / plain torch loop step", "measured": f"{res['trainer_step']['ratio']:.3f}x "
         f"({res['trainer_step']['trainer_step_s'] * 1000:.0f} vs {res['trainer_step']['loop_step_s'] * 1000:.0f} ms)",
         "budget": "<= 1.05x", "ok": res["trainer_step"]["ratio"] <= BUDGETS["trainer_vs_loop_step"]},
        {"figure": "HSIC test n=2000 d=64", "measured": f"{res['hsic']['seconds']:.3f} s",
         "budget": "<= 0.3 s", "ok": res["hsic"]["seconds"] <= BUDGETS["hsic_seconds"]},
        {"figure": "HSIC p-value vs hyppo (same data)", "measured": "n/a" if res["hsic"]["p_diff"] is None else
         f"|{res['hsic']['p_ours']:.3f} - {res['hsic']['p_hyppo']:.3f}| = {res['hsic']['p_diff']:.3f}",
         "budget": "<= 0.02", "ok": None if res["hsic"]["p_diff"] is None else res["hsic"]["p_diff"] <= BUDGETS["hsic_p_diff"]},
        {"figure": "batched / item-by-item generation", "measured": f"{speed:.1f}x" if speed else str(gen),
         "budget": ">= 10x", "ok": None if not speed else speed >= BUDGETS["batched_speedup"]},
        {"figure": "GCG candidates scored / s: batched with prefix cache vs one forward each",
         "measured": f"{res['gcg']['batched_per_s']:.0f} vs {res['gcg']['naive_per_s']:.0f} ({res['gcg']['ratio']:.1f}x)",
         "budget": ">= 3x", "ok": res["gcg"]["ratio"] >= BUDGETS["gcg_batched_speedup"]},
    ]
    for r in rows:
        r["status"] = "not measured" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
    res["rows"] = rows
    res["chapters"] = chapter_rows(b)
    out = PROJECT_ROOT / "outputs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "bench.md").write_text(f"# Benchmark\n\nMachine: {res['machine']}\n\n"
                                  + markdown_table(rows, ["figure", "measured", "budget", "status"])
                                  + ("\n\n## Chapters of the last default book\n\n"
                                     + markdown_table(res["chapters"], ["chapter", "seconds", "share"])
                                     if res["chapters"] else ""))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.book.bench")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    a = ap.parse_args(argv)
    res = run_bench(a.quick)
    print(markdown_table(res["rows"], ["figure", "measured", "budget", "status"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
