"""The training contract's selection rule (issue 30): which epoch of a trained defense becomes best_model.

Every trained defense (the causal method, its ablations, StruQ, SecAlign, their original recipes) keeps the epoch
with the lowest validation loss on O*: the clean and the injected validation items, each in the defense's own view
of the prompt, each item weighing the same (a realistic item's ~70 target tokens would otherwise outweigh a world
item's 1-3). No defense optimises this quantity beyond its own task loss; the causal method used to keep the epoch
of highest causal stability, the quantity its invariance term trains, which favoured it.

Also the losses chapter 06 reports: the token-averaged task loss of a set of records (`mean_task_loss`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from causal_lib.config import Config
from causal_lib.training.examples import SFTDataset, make_collator
from causal_lib.training.losses import task_loss

SELECT_BY = "val_loss"  # the epoch score's key; lower is better
SELECTION_RULE = ("lowest validation loss on O* (clean and injected validation items, each item weighted equally, "
                  "in the defense's own prompt)")


def _batches(tokenizer, records: Sequence, cfg: Config, limit: int):
    ds = SFTDataset(list(records)[:limit], tokenizer, cfg.model.max_seq_length)
    collate = make_collator(tokenizer.pad_token_id)
    for i in range(0, len(ds), cfg.eval.batch_size):
        yield collate([ds[j] for j in range(i, min(i + cfg.eval.batch_size, len(ds)))])


@torch.no_grad()
def mean_task_loss(model, tokenizer, records: Sequence, cfg: Config, limit: int = 200) -> float:
    """Token-averaged cross-entropy on the targets of `records` (the same L_task as training)."""
    total, n = 0.0, 0
    for b in _batches(tokenizer, records, cfg, limit):
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        k = int((b["labels"][:, 1:] != -100).sum())
        total += float(task_loss(out.logits, b["labels"])) * k
        n += k
    return total / max(n, 1)


@torch.no_grad()
def item_losses(model, tokenizer, records: Sequence, cfg: Config, limit: int = 200) -> list[float]:
    """Each record's mean cross-entropy over its own target tokens, in the records' order (first `limit`)."""
    out = []
    for b in _batches(tokenizer, records, cfg, limit):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                             reduction="none").view(labels.shape)
        counts = (labels != -100).sum(dim=1).clamp(min=1)
        out.extend((ce.sum(dim=1) / counts).tolist())
    return out


def validation_loss(model, tokenizer, clean: Sequence, injected: Sequence, cfg: Config, limit: int = 200) -> dict:
    """{val_loss (the rule's score: mean over every item), val_loss_clean, val_loss_injected} of the first `limit`
    clean and injected validation items (already in the defense's view)."""
    was_training = model.training
    model.eval()  # no dropout in the score: the same number chapter 06 gets from the reloaded checkpoint
    try:
        c = item_losses(model, tokenizer, clean, cfg, limit)
        i = item_losses(model, tokenizer, injected, cfg, limit)
    finally:
        model.train(was_training)
    if not c and not i:
        raise ValueError("validation loss: no clean or injected validation items")
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {SELECT_BY: mean(c + i), "val_loss_clean": mean(c), "val_loss_injected": mean(i), "val_items": len(c + i)}


def validation_score_fn(cfg: Config, val_records: Sequence | None, tokenizer,
                        view: Callable[[list], list] | None = None, limit: int = 200):
    """The per-epoch score of the rule: score(model) -> validation_loss(...) on the clean and injected items of
    `val_records` seen through `view` (records -> records as the defense's model reads them; None = as they are).
    None when there are no validation records (then best = the last epoch)."""
    if not val_records:
        return None
    view = view or list
    clean = view([r for r in val_records if r.kind == "clean"][:limit])
    inj = view([r for r in val_records if r.kind == "injected"][:limit])
    if not clean and not inj:
        return None
    return lambda model: validation_loss(model, tokenizer, clean, inj, cfg, limit)
