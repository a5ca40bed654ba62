"""Training with the HF Trainer: plain SFT (the base, StruQ) and the causal objective on counterfactual pairs.

Layout of one trained model `name` (base, causal, struq, secalign) under outputs/<run>/checkpoints/<name>/:
    trainer/checkpoint-N/   full Trainer state per epoch (optimizer, scheduler, RNG) for --resume;
                            a folder counts only once `COMPLETE` is written after the save finished
    epoch_N/                the model alone (safetensors + tokenizer + checkpoint.json), written atomically
    best_model/             the epoch chosen by the training contract's rule (training.selection: lowest validation loss on O*)
Logs: metrics/train_<name>_log.jsonl (every logged step: losses, lr, grad norm, RSS, CUDA peak, steps/s),
TensorBoard events under logs/<name>/ when report_to is tensorboard.
On several processes (DDP under accelerate launch / torchrun, causal_lib.core.distributed) every rank trains on
its share of each global batch (train.batch_size) and rank 0 alone writes all of the above.
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

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from causal_lib.core import progress
from causal_lib.core.run_folder import copy_folder_atomic
from causal_lib.config import Config
from causal_lib.models.checkpoints import checkpoint_json, save_checkpoint
from causal_lib.models.load import resolved_dtype
from causal_lib.core import distributed
from causal_lib.training.examples import make_collator
from causal_lib.training.losses import response_window, task_loss

ADVICE_NAN = ("lower train.learning_rate (e.g. by 3x), raise train.warmup_ratio (e.g. 0.1), keep "
              "train.max_grad_norm at 1.0; training stopped and the last complete checkpoint is kept")


ADVICE_OOM = ("lower model.max_seq_length or train.batch_size, lower model.lora.r, or enable "
              "model.gradient_checkpointing (or 4-bit QLoRA on a GPU)")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


def check_finite(loss: torch.Tensor, where: str) -> None:
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

    def _get_train_sampler(self, train_dataset=None):
        # Batches of similar length are formed from the global batch, as in one process, then each rank takes its
        # share of every batch: the same examples per optimizer step on any number of processes.
        sampler = super()._get_train_sampler(train_dataset)
        if hasattr(sampler, "batch_size") and type(sampler).__name__ == "LengthGroupedSampler":
            sampler.batch_size *= self.args.world_size
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out, labels = forward_for_labels(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        loss = task_loss(out.logits, labels)
        check_finite(loss, "L_task")
        if self.args.world_size > 1 and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # DDP averages the ranks' gradients: weigh this rank's token mean by its share of the global batch's
            # response tokens (the Trainer counts them over every rank), so the step optimises the global batch's
            # token mean, as one process does. In one process nothing changes.
            mine = (labels[:, 1:] != -100).sum()
            loss = loss * mine * self.args.world_size / num_items_in_batch
        return (loss, out) if return_outputs else loss


class JsonlLogger(TrainerCallback):
    """Every log event as one JSON line, with memory and speed, so notebooks plot without TensorBoard."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = self._step0 = None

    def on_train_begin(self, args, state, control, **kw):
        self._t0, self._step0 = time.time(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not getattr(state, "is_world_process_zero", True):  # one log per run: rank 0's (the Trainer's loss is the mean over ranks)
            return
        import psutil

        rec = {"step": state.global_step, "epoch": state.epoch, **(logs or {}),
               "rss_gb": psutil.Process().memory_info().rss / 2**30}
        if torch.cuda.is_available():
            rec["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if self._t0 is not None and state.global_step > self._step0:
            rec["steps_per_s"] = (state.global_step - self._step0) / max(time.time() - self._t0, 1e-9)
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")


class ConsoleProgress(TrainerCallback):
    """Step, loss and ETA to the book's console (causal_lib.core.progress; a no-op outside the book)."""

    def __init__(self, name: str):
        self.name, self._t0, self._step0, self._loss = name, None, 0, None

    def on_train_begin(self, args, state, control, **kw):
        self._t0, self._step0 = time.time(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self._loss = logs["loss"]

    def on_step_end(self, args, state, control, **kw):
        if not getattr(state, "is_world_process_zero", True):
            return
        done, total = state.global_step - self._step0, max(state.max_steps - self._step0, 1)
        loss = f", loss {self._loss:.4g}" if isinstance(self._loss, (int, float)) else ""
        progress.report(f"train {self.name}: step {state.global_step}/{state.max_steps}{loss} "
                        f"({progress.eta(done, total, time.time() - self._t0)})", key=f"train {self.name}",
                        force=state.global_step >= state.max_steps)


class GradientGuard(TrainerCallback):
    """Stops on non-finite gradients before the optimizer applies them."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        for n, p in model.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise TrainingError(f"non-finite gradient in {n} at step {state.global_step}: {ADVICE_NAN}")


class EpochExport(TrainerCallback):
    """After each epoch: mark the Trainer checkpoint complete, export the model to epoch_N atomically,
    and score it on the validation data (training.selection's validation loss, and what a defense records beside it)."""

    def __init__(self, out_dir: Path, tokenizer, score_fn=None, extra: dict | None = None):
        self.out_dir, self.tokenizer, self.score_fn, self.extra = Path(out_dir), tokenizer, score_fn, extra or {}
        self.scores: dict[int, dict] = {}
        self.model = None

    def on_save(self, args, state, control, **kw):
        distributed.barrier()  # every rank's part (its RNG state) is written before the checkpoint counts
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if getattr(state, "is_world_process_zero", True) and ckpt.is_dir():
            (ckpt / "COMPLETE").write_text(str(state.global_step))

    def on_epoch_end(self, args, state, control, model=None, **kw):
        if not getattr(state, "is_world_process_zero", True):  # rank 0 scores and exports the epoch; the others train on
            return
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
        meta = checkpoint_json(ep_dir)
        done_at = meta.get("extra", {}).get("global_step") if meta is not None else None
        if done_at is None or done_at > step:
            shutil.rmtree(ep_dir, ignore_errors=True)
    if log_path.exists():
        keep = [ln for ln in log_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in keep))


@dataclass
class TrainResult:
    name: str
    epochs: dict[int, dict] = field(default_factory=dict)  # epoch -> validation scores
    best_epoch: int | None = None
    train_seconds: float = 0.0
    steps: int = 0
    log_path: str = ""
    resumed_from: str | None = None


def _cwd_relative(path: Path) -> str:
    """`path` relative to the working directory when inside it (the book's kernels run in the project root):
    the Trainer stores its output and logging folders in training_args.bin and the TensorBoard events, and
    a shared run must not carry the checkout's absolute path."""
    try:
        return os.path.relpath(Path(path).resolve(), Path.cwd().resolve()) if Path(path).resolve().is_relative_to(
            Path.cwd().resolve()) else str(path)
    except (OSError, ValueError):
        return str(path)


def training_arguments(cfg: Config, out_dir: Path, *, epochs: float, learning_rate: float, seed: int,
                       logging_steps: int = 10) -> TrainingArguments:
    tc, mc = cfg.train, cfg.model
    cuda = torch.cuda.is_available()
    dtype = resolved_dtype(mc)
    report = [] if tc.report_to == "none" else [tc.report_to]
    return TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=epochs, learning_rate=learning_rate,
        # train.batch_size is the global batch: on N processes each takes batch_size / N per step
        per_device_train_batch_size=distributed.per_process_batch(tc.batch_size),
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        warmup_steps=tc.warmup_ratio, max_grad_norm=tc.max_grad_norm, weight_decay=tc.weight_decay,
        lr_scheduler_type="cosine", logging_steps=logging_steps, logging_nan_inf_filter=False,
        save_strategy="epoch", save_total_limit=None, eval_strategy="no", report_to=report, seed=seed, data_seed=seed,
        # bf16 autocast on the CPU too (model.dtype bfloat16, or auto on a CPU with native bf16): SmolLM2 LoRA steps
        # 1.9x faster there (DESIGN.md s.9); fp16 autocast only on CUDA. The embedded model trains in float32.
        use_cpu=not cuda, bf16=dtype == "bfloat16", fp16=cuda and dtype == "float16",
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
    main = distributed.is_main_process()

    def clean_up():  # rank 0 alone tidies the folder and picks the checkpoint; the other ranks take its choice
        resume_from = complete_trainer_checkpoint(trainer_dir) if resume else None
        if resume_from is None:  # nothing complete to continue from: start clean, as an uninterrupted run would
            shutil.rmtree(ckpt_root, ignore_errors=True)
            log_path.unlink(missing_ok=True)
        else:
            _forget_after(ckpt_root, log_path, _checkpoint_step(resume_from))
        return resume_from

    resume_from = distributed.broadcast(clean_up() if main else None)
    os.environ["TENSORBOARD_LOGGING_DIR"] = _cwd_relative(paths.logs / name)
    os.environ.setdefault("WANDB_MODE", "offline")  # W&B never needs the network unless asked
    args = training_arguments(cfg, Path(_cwd_relative(trainer_dir)), epochs=epochs, learning_rate=learning_rate, seed=cfg.run.seed,
                              logging_steps=logging_steps)
    if batch_size:
        args.per_device_train_batch_size = distributed.per_process_batch(batch_size, "the batch size")
    # a short run (a real model on the CPU: tens of steps) still logs about ten loss points
    steps = max_steps or math.ceil(len(train_dataset) / (args.per_device_train_batch_size * distributed.world_size()
                                                         * args.gradient_accumulation_steps) * epochs)
    args.logging_steps = max(1, min(logging_steps, steps // 10))
    if getattr(train_dataset, "items", None) and "input_ids" in train_dataset.items[0]:
        # batches of similar length: with random batches 28% of the tokens of the embedded corpus are padding
        args.train_sampling_strategy = "group_by_length"
    if max_steps:
        args.max_steps = max_steps
    if lr_scheduler_type:
        args.lr_scheduler_type = lr_scheduler_type
    export = EpochExport(ckpt_root, tokenizer, score_fn, extra={"name": name, **(extra_meta or {})})
    kwargs = dict(trainer_kwargs or {})
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset,
                          data_collator=make_collator(tokenizer.pad_token_id),
                          callbacks=[JsonlLogger(log_path), GradientGuard(), ConsoleProgress(name), export], **kwargs)
    t0 = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as e:
        raise TrainingError(f"out of memory while training {name}: {ADVICE_OOM} ({e})") from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise TrainingError(f"out of memory while training {name}: {ADVICE_OOM} ({e})") from None
        raise
    # With mixed precision, accelerate wraps model.forward in autocast; the model handed back must compute as a
    # reloaded checkpoint does (chapter 03's round trip found bf16 logits != fp32 ones), so the wrapper is removed.
    from accelerate.utils import extract_model_from_parallel

    extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False)
    result = TrainResult(name=name, train_seconds=time.time() - t0, steps=trainer.state.global_step,
                         log_path=str(log_path), resumed_from=resume_from)
    if not main:  # rank 0 selects and writes best_model; best_epoch stays None here, so nothing else is written
        distributed.barrier()
        return result
    # On resume the epochs already done were scored in the earlier process: read their exports back.
    for ep_dir in sorted(ckpt_root.glob("epoch_*")):
        ep = int(ep_dir.name.split("_")[1])
        meta = checkpoint_json(ep_dir) or {}
        result.epochs[ep] = export.scores.get(ep, meta.get("extra", meta).get("val", {}))
    if result.epochs:
        if select_by and all(select_by in s for s in result.epochs.values()):
            pick = max if higher_is_better else min
            result.best_epoch = pick(result.epochs, key=lambda e: result.epochs[e][select_by])
        else:
            result.best_epoch = max(result.epochs)
        set_best_model(ckpt_root, result.best_epoch)
    distributed.barrier()  # the other ranks go on (a next curriculum stage) once best_model is there
    return result


def set_best_model(root: Path, epoch: int) -> Path:
    """Copy `root`/epoch_<epoch> to `root`/best_model (through a temporary folder, then a rename, so a crash
    never leaves half a best_model) -> the best_model folder."""
    root = Path(root)
    return copy_folder_atomic(root / f"epoch_{epoch}", root / "best_model")


def read_train_log(paths, name: str) -> list[dict]:
    p = paths.metrics / f"train_{name}_log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def steps_per_second(log: list[dict]) -> float | None:
    vals = [r["steps_per_s"] for r in log if "steps_per_s" in r]
    return vals[-1] if vals else None


def nan_free(log: list[dict]) -> bool:
    return all(math.isfinite(v) for r in log for k, v in r.items() if k.startswith("loss") and isinstance(v, float))
