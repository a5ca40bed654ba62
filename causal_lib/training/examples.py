"""Training examples: counterfactual (clean, injected) pairs and their Z features, the SFT and pair
datasets (encoded by the one prompt encoder, models.prompts.encode_example), and the collator that
right-pads each batch (models.prompts.pad_sequences)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from causal_lib.models.prompts import encode_example, followup_ids, pad_sequences


def make_pairs(records: Sequence) -> list[tuple]:
    """(clean, injected) twins sharing a pair_id, in the records' order."""
    clean = {r.pair_id: r for r in records if r.kind == "clean"}
    return [(clean[r.pair_id], r) for r in records if r.kind == "injected" and r.pair_id in clean]


def training_slots(pairs: Sequence[tuple], clean_pair_fraction: float = 0.25, seed: int = 0) -> list[tuple]:
    """The training contract's examples (issue 30): one slot per (clean, injected) pair -> (clean, trained), where
    `trained` is the injected twin or, for a `clean_pair_fraction` share drawn with `seed`, the clean item itself
    (a task gradient on clean inputs). Every SFT-style defense trains on exactly these `trained` records, in this
    order: the causal method (as the injected side of its pairs), adversarial SFT and the data-matched StruQ."""
    rng = np.random.default_rng(seed)
    return [(clean, clean if rng.random() < clean_pair_fraction else inj) for clean, inj in pairs]


def z_vocabulary(records: Sequence) -> list[str]:
    """Feature names of Z for the HSIC term: one-hot of the attack family and of the goal."""
    fam = sorted({r.family for r in records if r.family})
    goal = sorted({r.goal for r in records if r.goal})
    return [f"family={f}" for f in fam] + [f"goal={g}" for g in goal]


def z_features(record, vocab: Sequence[str]) -> list[float]:
    on = {f"family={record.family}", f"goal={record.goal}"} if record.kind == "injected" else set()
    return [1.0 if v in on else 0.0 for v in vocab]


class SFTDataset(Dataset):
    """One chat example per item: system S, user U, assistant target (loss on the target only)."""

    def __init__(self, records: Sequence, tokenizer, max_length: int, format_fn=None, followups_fn=None):
        """followups_fn(record) -> [(question, answer), ...]: later user turns appended (while they fit)."""
        fmt = format_fn or (lambda r: (r.system, r.data, r.target))
        self.items = []
        for r in records:
            s, u, t = fmt(r)
            enc = encode_example(tokenizer, s, u, t, max_length=max_length)
            ids, labels = enc["input_ids"], enc["labels"]
            for turn in (followups_fn(r) if followups_fn else []):
                more_ids, more_labels = followup_ids(tokenizer, [turn])
                if len(ids) + len(more_ids) > max_length:
                    break
                ids, labels = ids + more_ids, labels + more_labels
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class PairDataset(Dataset):
    """Counterfactual pairs (clean, injected): same S and D, same target O*, differing only in Z.

    A share of clean-clean pairs (`clean_pair_fraction`) keeps a task gradient on clean inputs, since the
    clean pass of a pair runs without gradient (it is the fixed target of the invariance term)."""

    def __init__(self, pairs: Sequence[tuple], tokenizer, max_length: int, z_vocab: Sequence[str],
                 clean_pair_fraction: float = 0.25, seed: int = 0):
        # s_group, the strata of L_spurious: the task of S (8 in the world), as in chapter 07's d-separation test.
        # The exact S strings (32 in the world's training split) left a median group of 1 in a random batch of 32
        # and 7% of its items in groups of >= 4 (losses.MIN_GROUP_SIZE); by task: median 4, 76%.
        groups: dict[str, int] = {}
        self.items = []
        for clean, inj in training_slots(pairs, clean_pair_fraction, seed):
            c = encode_example(tokenizer, clean.system, clean.data, clean.target, max_length=max_length)
            i = encode_example(tokenizer, inj.system, inj.data, inj.target, max_length=max_length)
            self.items.append({
                "clean_input_ids": c["input_ids"], "clean_labels": c["labels"], "clean_prompt_length": c["prompt_length"],
                "injected_input_ids": i["input_ids"], "injected_labels": i["labels"],
                "injected_prompt_length": i["prompt_length"],
                "z": z_features(inj, z_vocab), "s_group": groups.setdefault(clean.task, len(groups)),
            })

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class TaskBatchSampler(torch.utils.data.Sampler):
    """An epoch of pair indices in batches of one task group (issue 32): L_spurious estimates HSIC(R, Z) within
    the groups of S, and a random batch of 8 pairs over the world's 8 tasks leaves most groups under the estimator's
    minimum (losses.MIN_GROUP_SIZE), so the term is 0 on most steps whatever R does. Here each group is shuffled
    and cut into batches of `batch` pairs; each group's remainder follows the others' (so a mixed batch still holds
    few groups), and the order of the batches is shuffled, the one short batch (if any) last. Every index once per
    epoch. The order is a function of (`seed`, epoch) alone: the Trainer calls `set_epoch` before each epoch (and
    on resume, for the epoch it resumes), so every process of a DDP run draws the same order whatever its own
    random state did (dropout draws differ per process), and a resumed run the uninterrupted one's. `batch` is one
    forward's pairs over all processes (the global micro-batch)."""

    def __init__(self, groups: Sequence[int], batch: int, seed: int = 0):
        self.groups = [int(g) for g in groups]
        self.batch = max(int(batch), 1)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        import random

        rng = random.Random(f"causal-pi:task-batches:{self.seed}:{self.epoch}")
        members: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            members.setdefault(g, []).append(i)
        full, rest = [], []
        for g in sorted(members):
            idx = members[g]
            rng.shuffle(idx)
            cut = len(idx) - len(idx) % self.batch
            full += [idx[k:k + self.batch] for k in range(0, cut, self.batch)]
            rest += idx[cut:]
        chunks = full + [rest[k:k + self.batch] for k in range(0, len(rest), self.batch)]
        short = chunks.pop() if chunks and len(chunks[-1]) < self.batch else None
        rng.shuffle(chunks)
        return iter([i for c in chunks + ([short] if short else []) for i in c])


def make_collator(pad_id: int):
    """Right-pads each side of a batch to its own longest item (not a fixed length: DESIGN.md s.9)."""

    def collate(batch: list[dict]) -> dict:
        out = {}
        for prefix in ("", "clean_", "injected_"):
            key = f"{prefix}input_ids"
            if key not in batch[0]:
                continue
            ids = [b[key] for b in batch]
            out[key] = pad_sequences(ids, pad_id)
            out[f"{prefix}attention_mask"] = pad_sequences([[1] * len(s) for s in ids], 0)
            out[f"{prefix}labels"] = pad_sequences([b[f"{prefix}labels"] for b in batch], -100)
            if f"{prefix}prompt_length" in batch[0]:
                out[f"{prefix}prompt_length"] = torch.tensor([b[f"{prefix}prompt_length"] for b in batch])
        if "z" in batch[0]:
            out["z"] = torch.tensor([b["z"] for b in batch], dtype=torch.float32)
            out["s_group"] = torch.tensor([b["s_group"] for b in batch])
        return out

    return collate
