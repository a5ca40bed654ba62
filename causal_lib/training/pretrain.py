"""The undefended base and the trained models of a run: the tokenizer of the embedded model, pre-training
of the base (chapter 04), and loading any defense's model by name for the later chapters."""
from __future__ import annotations

import random
from pathlib import Path

from causal_lib.book.run_folder import RunPaths
from causal_lib.config import Config
from causal_lib.data import world
from causal_lib.data.records import load_split
from causal_lib.models.checkpoints import load_checkpoint
from causal_lib.models.load import build_model, load_hf_model
from causal_lib.models.prompts import train_tokenizer
from causal_lib.training.examples import SFTDataset
from causal_lib.training.trainer import TrainResult, run_training


def tokenizer_dir(paths: RunPaths) -> Path:
    return paths.checkpoints / "tokenizer"


def ensure_tokenizer(cfg: Config, paths: RunPaths):
    """The embedded model's byte-level BPE, trained once per run on the world's own corpus and reused;
    for a real model, its own tokenizer."""
    if cfg.model.kind == "hf":
        return load_hf_model(cfg.model)[1]
    from transformers import AutoTokenizer


    d = tokenizer_dir(paths)
    if (d / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    texts = []
    for split in ("base_corpus", "train"):
        for r in load_split(paths.data, split):
            texts += [r.system, r.data, r.target]
    tok = train_tokenizer(texts, vocab_size=cfg.model.tiny.vocab_size)
    tmp = d.with_name(d.name + ".tmp")
    tok.save_pretrained(str(tmp))
    tmp.replace(d) if not d.exists() else None
    return tok


def base_checkpoint(paths: RunPaths) -> Path:
    return paths.checkpoints / "base" / "best_model"


def base_training_records(paths: RunPaths) -> list:
    """The base learns to follow instructions wherever they appear (base corpus), plus the clean training
    documents so that its benign accuracy is measured on the same task distribution."""

    return load_split(paths.data, "base_corpus") + [r for r in load_split(paths.data, "train") if r.kind == "clean"]


def is_plain_task_example(r) -> bool:
    """A base-corpus or clean training example that is just the task: no revision, note or extra instruction."""
    return r.kind in ("base", "clean") and r.data == r.clean_data and r.template_id in (None, "plain")


def base_followups(k: int, seed: int):
    """Further questions on the document of each plain base example and clean training example (later user
    turns, data.world.followup_turns), drawn from a generator seeded by the run seed and the record id (the same
    turns on every run and resume). None when k == 0."""
    if k <= 0:
        return None
    def turns(r):
        if not is_plain_task_example(r):
            return []
        return world.followup_turns(r.clean_data, r.target, k, random.Random(f"{seed}:{r.id}"))

    return turns


def curriculum_runs(cfg: Config) -> list[str]:
    """Run names (checkpoints/<name>, metrics/train_<name>_log.jsonl) of the base's curriculum stages, in order."""
    if cfg.model.kind == "hf" or cfg.train.base_curriculum_epochs <= 0:
        return []
    return [f"base_curriculum_{i + 1}" for i in range(len(cfg.train.base_curriculum))]


def train_base(cfg: Config, paths: RunPaths, resume: bool = False) -> TrainResult | None:
    """Pre-train the embedded model from scratch as the undefended base; a real model is used as it is."""
    if cfg.model.kind == "hf":
        return None
    tok = ensure_tokenizer(cfg, paths)
    model, tok = build_model(cfg.model, tok, seed=cfg.run.seed)
    tc = cfg.train
    records = base_training_records(paths)
    followups = base_followups(tc.base_followups, cfg.run.seed)
    for name, tasks in zip(curriculum_runs(cfg), tc.base_curriculum):
        stage = [r for r in records if r.task in tasks and is_plain_task_example(r)]
        if not stage:
            raise ValueError(f"train.base_curriculum stage {tasks} matches no plain example of the base corpus; "
                             f"choose from {sorted({r.task for r in records})} or set train.base_curriculum: []")
        done = paths.checkpoints / name / "best_model"  # written when the stage has finished
        if resume and done.exists():  # a finished stage is read back (its last epoch), not trained again
            model = load_checkpoint(done, cfg.model, is_trainable=True)[0]
            continue
        run_training(cfg, paths, name, model, tok, SFTDataset(stage, tok, cfg.model.max_seq_length,
                                                              followups_fn=followups),
                     epochs=tc.base_curriculum_epochs, learning_rate=tc.base_learning_rate, resume=resume,
                     # constant after warmup: a stage is a warm start; with the cosine decay over a stage of ~440
                     # steps the copy mechanism had not formed when the rate reached 0 (first item 0.41)
                     lr_scheduler_type="constant_with_warmup",
                     extra_meta={"defense": "none", "curriculum_tasks": list(tasks)})
    ds = SFTDataset(records, tok, cfg.model.max_seq_length, followups_fn=followups)
    return run_training(cfg, paths, "base", model, tok, ds, epochs=tc.base_epochs,
                        learning_rate=tc.base_learning_rate, resume=resume,
                        extra_meta={"defense": "none"})
