"""The training dry run (chapter 03): a few optimiser steps of the base's SFT on a handful of base-corpus
examples, to show before a long run that it does not run out of memory, the loss falls, memory stays under
the limit and a checkpoint saves and reloads to identical outputs."""
from __future__ import annotations

import math
import resource
import time

import torch

from causal_lib.config import Config
from causal_lib.data.records import load_split
from causal_lib.models.checkpoints import load_checkpoint
from causal_lib.models.load import apply_lora, build_model, is_peft_model
from causal_lib.training.examples import SFTDataset, make_collator
from causal_lib.training.losses import task_loss
from causal_lib.training.pretrain import ensure_tokenizer
from causal_lib.training.trainer import nan_free, read_train_log, run_training


def dry_run(cfg: Config, paths) -> dict:
    """dry_run_steps optimizer steps on dry_run_samples examples: no OOM, the loss falls, memory under the
    limit, and a checkpoint that saves and reloads to identical outputs."""
    tc = cfg.train
    model, tok = build_model(cfg.model, ensure_tokenizer(cfg, paths), seed=cfg.run.seed)
    if cfg.model.use_lora and not is_peft_model(model):
        model = apply_lora(model, cfg.model)
    records = load_split(paths.data, "base_corpus")[: tc.dry_run_samples]
    ds = SFTDataset(records, tok, cfg.model.max_seq_length)
    batch = make_collator(tok.pad_token_id)([ds[i] for i in range(min(len(ds), 16))])

    def probe_loss():
        model.eval()
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model.train()
        return float(task_loss(out.logits, batch["labels"]))

    before = probe_loss()
    bs = max(1, math.ceil(len(ds) / tc.dry_run_steps))
    t0 = time.time()
    result = run_training(cfg, paths, "dry_run", model, tok, ds, epochs=1, learning_rate=tc.base_learning_rate,
                          logging_steps=1, batch_size=bs, max_steps=tc.dry_run_steps)
    seconds = time.time() - t0
    after = probe_loss()
    log = read_train_log(paths, "dry_run")
    ckpt = paths.checkpoints / "dry_run" / f"epoch_{max(result.epochs)}" if result.epochs else None
    identical = False
    if ckpt is not None:
        reloaded, _ = load_checkpoint(ckpt, cfg.model, is_trainable=False)
        model.eval()
        with torch.no_grad():
            a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        identical = bool(torch.equal(a, b))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if torch.cuda.is_available():
        peak_gb = max(peak_gb, torch.cuda.max_memory_allocated() / 2**30)
    return {"steps": result.steps, "samples": len(ds), "batch_size": bs, "seconds": seconds,
            "loss_before": before, "loss_after": after, "loss_curve": [r["loss"] for r in log if "loss" in r],
            "nan_free": nan_free(log), "peak_memory_gb": peak_gb, "memory_limit_gb": cfg.run.memory_limit_gb,
            "checkpoint": str(ckpt.relative_to(paths.root)) if ckpt else None,  # relative: a shared run stays readable
            "checkpoint_identical": identical}
