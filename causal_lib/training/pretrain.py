"""The undefended embedded base: its tokenizer and pre-training it with the project's recipe (chapter 04 with
base.source: pretrain, and the shipped base's recipe: training/derive_base.py)."""
from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

from causal_lib.core.run_folder import RunPaths
from causal_lib.config import Config
from causal_lib.data import world
from causal_lib.data.records import load_split
from causal_lib.models.checkpoints import load_checkpoint
from causal_lib.models.load import build_model, load_hf_model
from causal_lib.models.prompts import train_tokenizer
from causal_lib.training.examples import SFTDataset
from causal_lib.training import shipped_adapter, shipped_base
from causal_lib.training.trainer import TrainResult, run_training


def tokenizer_dir(paths: RunPaths) -> Path:
    return paths.checkpoints / "tokenizer"


TOKENIZER_SPLITS = ("base_corpus", "train")  # training text only: the tokenizer never sees the test split


_ALL_CAPS = re.compile(r"\b[A-Z]{2,}\b")


def train_run_tokenizer(splits: dict, vocab_size: int):
    """The embedded model's byte-level BPE on the S, U and target texts of the training files, with every
    all-capitals word (the generated payloads and codes, "SYSTEM") left out: no merge joins two capitals, so a
    string never seen in training is tokenized like the ones that were, one token per letter, and copying it
    is copying over an alphabet of ~40 symbols. With syllable merges learned from the training strings a test
    string was made of rare tokens and copying did not form within budget (README "The base model")."""
    texts = []
    for split in TOKENIZER_SPLITS:
        for r in splits[split]:
            texts += [_ALL_CAPS.sub(" ", t) for t in (r.system, r.data, r.target)]
    return train_tokenizer(texts, vocab_size=vocab_size)


def ensure_tokenizer(cfg: Config, paths: RunPaths):
    """The embedded model's byte-level BPE, trained once per run on the world's own corpus and reused;
    for a real model, its own tokenizer."""
    if cfg.model.kind == "hf":
        return load_hf_model(cfg.model)[1]
    from transformers import AutoTokenizer


    d = tokenizer_dir(paths)
    if cfg.base.source == "shipped":  # the shipped base's own tokenizer, checked and copied into the run
        shipped_base.install(cfg, d, base_checkpoint(paths), paths.metrics)
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    if (d / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    tok = train_run_tokenizer({s: load_split(paths.data, s) for s in TOKENIZER_SPLITS}, cfg.model.tiny.vocab_size)
    tmp = d.with_name(d.name + ".tmp")
    tok.save_pretrained(str(tmp))
    tmp.replace(d) if not d.exists() else None
    return tok


def base_checkpoint(paths: RunPaths) -> Path:
    return paths.checkpoints / "base" / "best_model"


def load_base_model(cfg: Config, paths: RunPaths, trainable: bool = False):
    """(model, tokenizer) of chapter 04's undefended base in this run (the defenses start from it); a real model
    without a tuned base of the run is loaded as installed."""
    from causal_lib.models.checkpoints import CheckpointError

    d = base_checkpoint(paths)
    if cfg.model.kind == "hf" and not d.exists():
        return load_hf_model(cfg.model)
    if not d.exists():
        raise CheckpointError(f"no base model at {d}: run chapter 04_base_model first "
                              f"(python -m causal_lib.book run --params ... --from 04)")
    return load_checkpoint(d, cfg.model, is_trainable=trainable)


REAL_BASE_ADAPTER_RUN = "base_lora"


def instruction_tune_real_base(cfg: Config, paths: RunPaths, resume: bool = False) -> TrainResult:
    """A real chat model as the world's undefended base: LoRA (model.lora) on the base corpus, as the embedded base
    learns it - requests are followed wherever they appear, later ones in the user turn included - then the adapter
    is merged into the weights and saved as checkpoints/base/best_model, a plain model on which every defense
    trains its own adapter. Untuned, SmolLM2 answers 15% of the world's tasks exactly and follows 6% of its
    attacks (DESIGN.md s.9): neither a baseline nor a vulnerable model. The adapter's epochs stay in
    checkpoints/base_lora/."""
    from causal_lib.models.checkpoints import save_checkpoint
    from causal_lib.models.load import forget_pristine_base

    if not cfg.model.use_lora:
        raise ValueError("train.base_epochs > 0 with model.kind: hf instruction-tunes the real base with LoRA; set "
                         "model.use_lora: true (or train.base_epochs: 0 to use the model as it is)")
    model, tok = load_hf_model(cfg.model)
    tc = cfg.train
    ds = SFTDataset(base_training_records(paths), tok, cfg.model.max_seq_length)
    result = run_training(cfg, paths, REAL_BASE_ADAPTER_RUN, model, tok, ds, epochs=tc.base_epochs,
                          learning_rate=tc.base_learning_rate, resume=resume,
                          extra_meta={"defense": "none", "stage": "LoRA instruction tuning of the real base"})
    # best_model is the last epoch (no score selects another), i.e. the model in memory, also after a resume
    merged = model.merge_and_unload()
    forget_pristine_base(merged)
    save_checkpoint(merged, tok, base_checkpoint(paths), extra={
        "name": "base", "defense": "none", "merged_adapter": f"checkpoints/{REAL_BASE_ADAPTER_RUN}/best_model",
        "base_name_or_path": cfg.model.name_or_path, "steps": result.steps, "train_seconds": result.train_seconds})
    return result


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


def stage_examples(records: list, tasks, seed: int) -> list:
    """A curriculum stage's examples: the stage's tasks asked of every training document of a fitting kind (each
    document once, one of its fitting tasks drawn by a generator seeded by the record id), as plain examples.
    Asking every document - not only the plain examples that happened to carry one of these tasks - gives the
    stage ~3x more distinct documents: the copy skill forms on fresh strings, not on a few repeated ones."""
    out, seen = [], set()
    for r in records:
        if r.clean_data in seen or r.task not in world.TASKS:
            continue
        seen.add(r.clean_data)
        doc = world.parse_document(r.clean_data)
        fitting = [t for t in tasks if world.TASKS[t].doc_kind == doc.kind]
        if not fitting:
            continue
        rng = random.Random(f"{seed}:{r.id}:stage")
        inst = world.TaskInstance(rng.choice(fitting))
        out.append(dataclasses.replace(r, id=f"{r.id}-stage", kind="base", task=inst.task, data=r.clean_data,
                                       system=world.system_text(inst, rng), target=world.answer(inst, doc),
                                       template_id="plain", goal=None, position=None, injection=None,
                                       injected_target=None, family=None))
    return out


def answer_sentence_examples(examples: list) -> list:
    """Copy warm-up: each example's data reduced to the one sentence that holds its answer ("Order code: TRAVO-37."),
    so that the only skill asked is to copy a span of the data - the step that did not form in the full documents
    within budget (README "The base model"). Examples whose answer is not a span of one sentence are dropped."""
    out = []
    for r in examples:
        sent = [s for s in world.split_segments(r.clean_data) if r.target in s]
        if len(sent) == 1:
            out.append(dataclasses.replace(r, id=f"{r.id}-warmup", data=sent[0], clean_data=sent[0]))
    return out


def stage_epochs(cfg: Config) -> list[float]:
    """Epochs of each curriculum stage: train.base_curriculum_stage_epochs, else base_curriculum_epochs for all."""
    tc = cfg.train
    return list(tc.base_curriculum_stage_epochs) or [tc.base_curriculum_epochs] * len(tc.base_curriculum)


def curriculum_runs(cfg: Config) -> list[str]:
    """Run names (checkpoints/<name>, metrics/train_<name>_log.jsonl) of the base's curriculum stages, in order."""
    if cfg.model.kind == "hf" or not any(e > 0 for e in stage_epochs(cfg)):
        return []
    warmup = ["base_copy_warmup"] if cfg.train.base_copy_warmup_epochs > 0 and cfg.train.base_curriculum else []
    return warmup + [f"base_curriculum_{i + 1}" for i in range(len(cfg.train.base_curriculum))]


def curriculum_stages(cfg: Config, records: list) -> list[tuple[str, list, float]]:
    """(run name, examples, epochs) of each curriculum stage in order: the copy warm-up (the first stage's tasks on
    the answer's sentence alone, train.base_copy_warmup_epochs), then each train.base_curriculum stage."""
    tc, names = cfg.train, curriculum_runs(cfg)
    stages = [(tasks, e) for tasks, e in zip(tc.base_curriculum, stage_epochs(cfg))]
    out = []
    if names and names[0] == "base_copy_warmup":
        first = stage_examples(records, tc.base_curriculum[0], cfg.run.seed)
        out.append((names.pop(0), answer_sentence_examples(first), tc.base_copy_warmup_epochs))
    for name, (tasks, e) in zip(names, stages):
        out.append((name, stage_examples(records, tasks, cfg.run.seed), e))
    return out


def boost_examples(cfg: Config, records: list) -> list:
    """The whole-corpus stage's extra examples: each train.base_boost_tasks task asked once more of every training
    document it fits (stage_examples, ids `<id>-boost`). Without them the record's city and the list's last item
    stayed below 20%; fine-tuning on them at a large share formed both copies (README "The base model")."""
    if not cfg.train.base_boost_tasks:
        return []
    return [dataclasses.replace(r, id=r.id.replace("-stage", "-boost"))
            for r in stage_examples(records, cfg.train.base_boost_tasks, cfg.run.seed + 1)]


def train_base(cfg: Config, paths: RunPaths, resume: bool = False) -> TrainResult | None:
    """Pre-train the embedded model from scratch as the undefended base (base.source: pretrain), or install the
    shipped base (base.source: shipped; nothing is trained, returns None). A real model gets the shipped tuned base
    (SmolLM2 with base.source: shipped: training/shipped_adapter.py), else is instruction-tuned on the world's base
    corpus with LoRA when train.base_epochs > 0 (instruction_tune_real_base), else used as it is."""
    if cfg.model.kind == "hf":
        if shipped_adapter.uses_shipped_adapter(cfg):  # the shipped tuned base: its adapter merged, nothing trained
            shipped_adapter.install_adapter(cfg, paths, base_checkpoint(paths))
            return None
        return instruction_tune_real_base(cfg, paths, resume) if cfg.train.base_epochs > 0 else None
    if cfg.base.source == "shipped":
        shipped_base.install(cfg, tokenizer_dir(paths), base_checkpoint(paths), paths.metrics)
        return None
    tok = ensure_tokenizer(cfg, paths)
    model, tok = build_model(cfg.model, tok, seed=cfg.run.seed)
    tc = cfg.train
    records = base_training_records(paths)
    followups = base_followups(tc.base_followups, cfg.run.seed)
    for name, stage, epochs in curriculum_stages(cfg, records):
        tasks = sorted({r.task for r in stage})
        if not stage:
            raise ValueError(f"train.base_curriculum stage {name} matches no training document; "
                             f"choose tasks from {sorted(world.TASKS)} or set train.base_curriculum: []")
        done = paths.checkpoints / name / "best_model"  # written when the stage has finished
        if resume and done.exists():  # a finished stage is read back (its last epoch), not trained again
            model = load_checkpoint(done, cfg.model, is_trainable=True)[0]
            continue
        run_training(cfg, paths, name, model, tok,
                     SFTDataset(stage, tok, cfg.model.max_seq_length,
                                followups_fn=None if name == "base_copy_warmup" else followups),
                     epochs=epochs, learning_rate=tc.base_learning_rate, resume=resume,
                     # constant after warmup: a stage is a warm start; with the cosine decay over a stage of ~440
                     # steps the copy mechanism had not formed when the rate reached 0 (first item 0.41)
                     lr_scheduler_type="constant_with_warmup",
                     extra_meta={"defense": "none", "curriculum_tasks": list(tasks)})
    ds = SFTDataset(records + boost_examples(cfg, records), tok, cfg.model.max_seq_length, followups_fn=followups)
    return run_training(cfg, paths, "base", model, tok, ds, epochs=tc.base_epochs,
                        learning_rate=tc.base_learning_rate, resume=resume,
                        extra_meta={"defense": "none"})

