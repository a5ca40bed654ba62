"""Training with the HF Trainer: plain SFT (the base, StruQ) and the causal objective on counterfactual pairs.

Layout of one trained model `name` (base, causal, struq, secalign) under outputs/<run>/checkpoints/<name>/:
    trainer/checkpoint-N/   full Trainer state per epoch (optimizer, scheduler, RNG) for --resume;
                            a folder counts only once `COMPLETE` is written after the save finished
    epoch_N/                the model alone (safetensors + tokenizer + checkpoint.json), written atomically
    best_model/             the epoch chosen by causal stability on the validation pairs (or by val loss for SFT)
Logs: metrics/train_<name>_log.jsonl (every logged step: losses, lr, grad norm, RSS, CUDA peak, steps/s),
TensorBoard events under logs/<name>/ when report_to is tensorboard.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from .config import Config
from .losses import causal_loss, hsic_loss, response_window, task_loss, total_loss
from .model import encode_example, followup_ids, save_checkpoint
from .representation import representation

ADVICE_NAN = ("lower train.learning_rate (e.g. by 3x), raise train.warmup_ratio (e.g. 0.1), keep "
              "train.max_grad_norm at 1.0; training stopped and the last complete checkpoint is kept")
ADVICE_OOM = ("lower model.max_seq_length or train.batch_size, lower model.lora.r, or enable "
              "model.gradient_checkpointing (or 4-bit QLoRA on a GPU)")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


# ---------------------------------------------------------------------------------------------
# data

def make_pairs(records: Sequence) -> list[tuple]:
    """(clean, injected) twins sharing a pair_id, in the records' order."""
    clean = {r.pair_id: r for r in records if r.kind == "clean"}
    return [(clean[r.pair_id], r) for r in records if r.kind == "injected" and r.pair_id in clean]


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
        rng = np.random.default_rng(seed)
        groups: dict[str, int] = {}
        self.items = []
        for clean, inj in pairs:
            if rng.random() < clean_pair_fraction:
                inj = clean
            c = encode_example(tokenizer, clean.system, clean.data, clean.target, max_length=max_length)
            i = encode_example(tokenizer, inj.system, inj.data, inj.target, max_length=max_length)
            self.items.append({
                "clean_input_ids": c["input_ids"], "clean_labels": c["labels"], "clean_prompt_length": c["prompt_length"],
                "injected_input_ids": i["input_ids"], "injected_labels": i["labels"],
                "injected_prompt_length": i["prompt_length"],
                "z": z_features(inj, z_vocab), "s_group": groups.setdefault(clean.system, len(groups)),
            })

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _pad(seqs, value):
    n = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def make_collator(pad_id: int):
    """Right-pads each side of a batch to its own longest item (not a fixed length: DESIGN.md s.9)."""

    def collate(batch: list[dict]) -> dict:
        out = {}
        for prefix in ("", "clean_", "injected_"):
            key = f"{prefix}input_ids"
            if key not in batch[0]:
                continue
            ids = [b[key] for b in batch]
            out[key] = _pad(ids, pad_id)
            out[f"{prefix}attention_mask"] = _pad([[1] * len(s) for s in ids], 0)
            out[f"{prefix}labels"] = _pad([b[f"{prefix}labels"] for b in batch], -100)
            if f"{prefix}prompt_length" in batch[0]:
                out[f"{prefix}prompt_length"] = torch.tensor([b[f"{prefix}prompt_length"] for b in batch])
        if "z" in batch[0]:
            out["z"] = torch.tensor([b["z"] for b in batch], dtype=torch.float32)
            out["s_group"] = torch.tensor([b["s_group"] for b in batch])
        return out

    return collate


# ---------------------------------------------------------------------------------------------
# trainers

def _check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss).all():
        raise TrainingError(f"non-finite loss ({loss.item()}) in {where}: {ADVICE_NAN}")


def _takes_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(model_cls) -> bool:  # once per class, not on every training step
    try:
        return "logits_to_keep" in inspect.signature(model_cls.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_for_labels(model, input_ids, attention_mask, labels, **kwargs):
    """The model's forward with logits only where `labels` need them -> (output, labels cut to match).

    The embedded model's answers are a few tokens after a ~40-token prompt: computing the LM head on the
    response window alone made a step of the 4-head model 19% cheaper (README, Performance). Hidden states stay
    whole, so R is unchanged. Models whose forward has no `logits_to_keep` get every position."""
    if not _takes_logits_to_keep(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs), labels
    keep = response_window(labels)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
    return out, labels[:, -keep:]


class SFTTrainer(Trainer):
    """Cross-entropy on the response tokens (L_task alone): the base model and StruQ."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out, labels = forward_for_labels(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        loss = task_loss(out.logits, labels)
        _check_finite(loss, "L_task")
        return (loss, out) if return_outputs else loss


def causal_objective(model, inputs: dict, cfg: Config):
    """L = L_task + lambda_causal * L_causal + lambda_spurious * L_spurious on a batch of pairs -> (L, parts, out).

    The clean pass is the fixed target of the invariance term and runs without gradient (1.35x a plain
    step instead of 1.65-1.8x for two gradient passes, DESIGN.md s.9)."""
    mc, tc = cfg.model, cfg.train
    with torch.no_grad():
        out_c, lab_c = forward_for_labels(model, inputs["clean_input_ids"], inputs["clean_attention_mask"],
                                          inputs["clean_labels"], output_hidden_states=True)
        r_c = representation(model, inputs["clean_input_ids"], inputs["clean_attention_mask"], layer=mc.repr_layer,
                             pooling=mc.repr_pooling, prompt_lengths=inputs["clean_prompt_length"],
                             hidden_states=out_c.hidden_states)
    out_i, lab_i = forward_for_labels(model, inputs["injected_input_ids"], inputs["injected_attention_mask"],
                                      inputs["injected_labels"], output_hidden_states=True)
    r_i = representation(model, inputs["injected_input_ids"], inputs["injected_attention_mask"], layer=mc.repr_layer,
                         pooling=mc.repr_pooling, prompt_lengths=inputs["injected_prompt_length"],
                         hidden_states=out_i.hidden_states)
    l_task = task_loss(out_i.logits, lab_i)
    # centred like the causal-stability metric: raw hidden states are anisotropic (cosines near 1)
    l_causal = causal_loss(r_c, r_i, logits_clean=out_c.logits, logits_injected=out_i.logits,
                           labels=(lab_c, lab_i),
                           kl_weight=tc.kl_weight, center=True)
    l_spur = hsic_loss(r_i, inputs["z"], groups=inputs["s_group"])
    loss, parts = total_loss(l_task, l_causal, l_spur, tc.lambda_causal, tc.lambda_spurious)
    for name in ("task", "causal", "spurious", "total"):
        _check_finite(torch.tensor(parts[name]), f"L_{name}")
    return loss, parts, out_i


class CausalTrainer(Trainer):
    """L = L_task + lambda_causal * L_causal + lambda_spurious * L_spurious (DESIGN.md s.3)."""

    def __init__(self, *args, cfg: Config, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self._parts_sum: dict[str, float] = {}
        self._parts_n = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, parts, out_i = causal_objective(model, inputs, self.cfg)
        for name in ("task", "causal", "spurious", "total"):
            self._parts_sum[f"loss_{name}"] = self._parts_sum.get(f"loss_{name}", 0.0) + parts[name]
        self._parts_n += 1
        return (loss, out_i) if return_outputs else loss

    def log(self, logs, start_time=None):
        if self._parts_n and "loss" in logs:
            logs.update({k: v / self._parts_n for k, v in self._parts_sum.items()})
            self._parts_sum, self._parts_n = {}, 0
        super().log(logs, start_time)


# ---------------------------------------------------------------------------------------------
# callbacks

class JsonlLogger(TrainerCallback):
    """Every log event as one JSON line, with memory and speed, so notebooks plot without TensorBoard."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = self._step0 = None

    def on_train_begin(self, args, state, control, **kw):
        self._t0, self._step0 = time.time(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        import psutil

        rec = {"step": state.global_step, "epoch": state.epoch, **(logs or {}),
               "rss_gb": psutil.Process().memory_info().rss / 2**30}
        if torch.cuda.is_available():
            rec["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if self._t0 is not None and state.global_step > self._step0:
            rec["steps_per_s"] = (state.global_step - self._step0) / max(time.time() - self._t0, 1e-9)
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")


class GradientGuard(TrainerCallback):
    """Stops on non-finite gradients before the optimizer applies them."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        for n, p in model.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise TrainingError(f"non-finite gradient in {n} at step {state.global_step}: {ADVICE_NAN}")


class EpochExport(TrainerCallback):
    """After each epoch: mark the Trainer checkpoint complete, export the model to epoch_N atomically,
    and score it on the validation data (causal stability, or mean task loss for SFT)."""

    def __init__(self, out_dir: Path, tokenizer, score_fn=None, extra: dict | None = None):
        self.out_dir, self.tokenizer, self.score_fn, self.extra = Path(out_dir), tokenizer, score_fn, extra or {}
        self.scores: dict[int, dict] = {}
        self.model = None

    def on_save(self, args, state, control, **kw):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            (ckpt / "COMPLETE").write_text(str(state.global_step))

    def on_epoch_end(self, args, state, control, model=None, **kw):
        epoch = int(round(state.epoch))
        score = self.score_fn(model) if self.score_fn else {}
        self.scores[epoch] = score
        save_checkpoint(model, self.tokenizer, self.out_dir / f"epoch_{epoch}",
                        extra={**self.extra, "epoch": epoch, "global_step": state.global_step, "val": score})
        model.train()


def complete_trainer_checkpoint(trainer_dir: Path) -> str | None:
    """The newest Trainer checkpoint that finished saving; half-written ones are set aside, never used."""
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return None
    ckpts = sorted(trainer_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for c in ckpts:
        if not (c / "COMPLETE").exists():
            shutil.rmtree(c, ignore_errors=True)  # incomplete: a kill during the write
    done = [c for c in ckpts if (c / "COMPLETE").exists()]
    return str(done[-1]) if done else None


def _checkpoint_step(trainer_checkpoint: str) -> int:
    return int(Path(trainer_checkpoint).name.split("-")[-1])


def _forget_after(ckpt_root: Path, log_path: Path, step: int) -> None:
    """Before resuming at `step`: drop what the killed process wrote after it (log lines, epoch exports,
    half-written temporary folders), so the resumed run's files equal an uninterrupted run's."""
    for stale in list(ckpt_root.glob("*.tmp*")) + list(ckpt_root.glob("*.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    for ep_dir in ckpt_root.glob("epoch_*"):
        meta = ep_dir / "checkpoint.json"
        done_at = json.loads(meta.read_text()).get("extra", {}).get("global_step") if meta.exists() else None
        if done_at is None or done_at > step:
            shutil.rmtree(ep_dir, ignore_errors=True)
    if log_path.exists():
        keep = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in keep))


# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    name: str
    epochs: dict[int, dict] = field(default_factory=dict)  # epoch -> validation scores
    best_epoch: int | None = None
    train_seconds: float = 0.0
    steps: int = 0
    log_path: str = ""
    resumed_from: str | None = None


def training_arguments(cfg: Config, out_dir: Path, *, epochs: float, learning_rate: float, seed: int,
                       logging_steps: int = 10) -> TrainingArguments:
    tc, mc = cfg.train, cfg.model
    cuda = torch.cuda.is_available()
    report = [] if tc.report_to == "none" else [tc.report_to]
    return TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, learning_rate=learning_rate,
        per_device_train_batch_size=tc.batch_size, gradient_accumulation_steps=tc.gradient_accumulation_steps,
        warmup_steps=tc.warmup_ratio, max_grad_norm=tc.max_grad_norm, weight_decay=tc.weight_decay,
        lr_scheduler_type="cosine", logging_steps=logging_steps, logging_nan_inf_filter=False,
        save_strategy="epoch", save_total_limit=None, eval_strategy="no", report_to=report, seed=seed, data_seed=seed,
        use_cpu=not cuda, bf16=cuda and mc.dtype == "bfloat16", fp16=cuda and mc.dtype == "float16",
        activation_checkpointing=mc.gradient_checkpointing, dataloader_num_workers=0, dataloader_pin_memory=False,
        remove_unused_columns=False, disable_tqdm=True, save_only_model=False,
    )


def run_training(cfg: Config, paths, name: str, model, tokenizer, train_dataset: Dataset, *, trainer_cls=SFTTrainer,
                 epochs: float, learning_rate: float, score_fn=None, select_by: str | None = None,
                 higher_is_better: bool = True, resume: bool = False, extra_meta: dict | None = None,
                 trainer_kwargs: dict | None = None, logging_steps: int = 10, batch_size: int | None = None,
                 max_steps: int | None = None, lr_scheduler_type: str | None = None) -> TrainResult:
    """Train `model` with `trainer_cls`, export epoch checkpoints and best_model; stop clearly on NaN/OOM."""
    ckpt_root = paths.checkpoints / name
    trainer_dir = ckpt_root / "trainer"
    log_path = paths.metrics / f"train_{name}_log.jsonl"
    resume_from = complete_trainer_checkpoint(trainer_dir) if resume else None
    if resume_from is None:  # nothing complete to continue from: start clean, as an uninterrupted run would
        shutil.rmtree(ckpt_root, ignore_errors=True)
        log_path.unlink(missing_ok=True)
    else:
        _forget_after(ckpt_root, log_path, _checkpoint_step(resume_from))
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(paths.logs / name)
    os.environ.setdefault("WANDB_MODE", "offline")  # W&B never needs the network unless asked
    args = training_arguments(cfg, trainer_dir, epochs=epochs, learning_rate=learning_rate, seed=cfg.run.seed,
                              logging_steps=logging_steps)
    if batch_size:
        args.per_device_train_batch_size = batch_size
    if getattr(train_dataset, "items", None) and "input_ids" in train_dataset.items[0]:
        # batches of similar length: with random batches 28% of the tokens of the embedded corpus are padding
        args.train_sampling_strategy = "group_by_length"
    if max_steps:
        args.max_steps = max_steps
    if lr_scheduler_type:
        args.lr_scheduler_type = lr_scheduler_type
    export = EpochExport(ckpt_root, tokenizer, score_fn, extra={"name": name, **(extra_meta or {})})
    kwargs = dict(trainer_kwargs or {})
    if trainer_cls is CausalTrainer:
        kwargs.setdefault("cfg", cfg)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset,
                          data_collator=make_collator(tokenizer.pad_token_id),
                          callbacks=[JsonlLogger(log_path), GradientGuard(), export], **kwargs)
    t0 = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as e:
        raise TrainingError(f"out of memory while training {name}: {ADVICE_OOM} ({e})") from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise TrainingError(f"out of memory while training {name}: {ADVICE_OOM} ({e})") from None
        raise
    result = TrainResult(name=name, train_seconds=time.time() - t0, steps=trainer.state.global_step,
                         log_path=str(log_path), resumed_from=resume_from)
    # On resume the epochs already done were scored in the earlier process: read their exports back.
    for ep_dir in sorted(ckpt_root.glob("epoch_*")):
        ep = int(ep_dir.name.split("_")[1])
        meta = json.loads((ep_dir / "checkpoint.json").read_text())
        result.epochs[ep] = export.scores.get(ep, meta.get("extra", meta).get("val", {}))
    if result.epochs:
        if select_by and all(select_by in s for s in result.epochs.values()):
            pick = max if higher_is_better else min
            result.best_epoch = pick(result.epochs, key=lambda e: result.epochs[e][select_by])
        else:
            result.best_epoch = max(result.epochs)
        best_src = ckpt_root / f"epoch_{result.best_epoch}"
        tmp = ckpt_root / "best_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(best_src, tmp)
        shutil.rmtree(ckpt_root / "best_model", ignore_errors=True)
        os.replace(tmp, ckpt_root / "best_model")
    return result


def read_train_log(paths, name: str) -> list[dict]:
    p = paths.metrics / f"train_{name}_log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def steps_per_second(log: list[dict]) -> float | None:
    vals = [r["steps_per_s"] for r in log if "steps_per_s" in r]
    return vals[-1] if vals else None


def nan_free(log: list[dict]) -> bool:
    return all(math.isfinite(v) for r in log for k, v in r.items() if k.startswith("loss") and isinstance(v, float))


# ---------------------------------------------------------------------------------------------
# the causal model (05_train, defense=causal) and the dry run (03_dry_run)

def validation_pairs(paths, limit: int | None = None) -> list[tuple]:
    from .data import load_split

    pairs = make_pairs(load_split(paths.data, "val"))
    return pairs[:limit] if limit else pairs


def train_causal(cfg: Config, paths, resume: bool = False, name: str = "causal") -> TrainResult:
    """Fine-tune the base with L_task + lambda_causal L_causal + lambda_spurious L_spurious on the train pairs;
    best_model = the epoch with the highest causal stability on the validation pairs."""
    from .base_model import base_checkpoint, load_model
    from .data import load_split
    from .metrics import representation_metrics
    from .model import apply_lora, is_peft_model

    model, tok = load_model(cfg, paths, "none", trainable=True)
    if cfg.model.use_lora and not is_peft_model(model):
        model = apply_lora(model, cfg.model)
    model.train()
    train = load_split(paths.data, "train")
    if cfg.train.debug:
        train = train[: 2 * cfg.train.debug_samples]
    pairs = make_pairs(train)
    ds = PairDataset(pairs, tok, cfg.model.max_seq_length, z_vocabulary(train),
                     cfg.train.clean_pair_fraction, seed=cfg.run.seed)
    val = validation_pairs(paths, limit=cfg.train.val_pairs)

    def score(m):
        r = representation_metrics(m, tok, val, cfg, n_boot=100)
        return {"causal_stability": r["causal_stability"]["value"], "epsilon_causal": r["epsilon_causal"]["value"]}

    return run_training(cfg, paths, name, model, tok, ds, trainer_cls=CausalTrainer, epochs=cfg.train.epochs,
                        learning_rate=cfg.train.learning_rate, score_fn=score, select_by="causal_stability",
                        resume=resume, extra_meta={"defense": "causal", "base": str(base_checkpoint(paths))})


def dry_run(cfg: Config, paths) -> dict:
    """dry_run_steps optimizer steps on dry_run_samples examples: no OOM, the loss falls, memory under the
    limit, and a checkpoint that saves and reloads to identical outputs."""
    import resource

    from .base_model import ensure_tokenizer
    from .data import load_split
    from .model import apply_lora, build_model, is_peft_model, load_checkpoint

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
