"""SecAlign (Chen et al. 2025): preference optimisation against prompt injection with TRL's DPOTrainer.

Each preference sample is an injected input in the StruQ format (reserved delimiters, data stripped):
chosen = O* (the answer to the trusted instruction), rejected = O_inj (the injection's own answer). The default row
trains on the training contract's injected inputs (every (clean, injected) training pair's injected twin with an
answer of its own, data="matched"); the "original recipe" row (secalign_original) on the paper's mixture: 90% naive,
10% completion-style injections from the TRAIN split. DPO sigmoid loss with beta = train.dpo_beta (0.1). Same base,
same front-end as StruQ.

The pairs are tokenised here by the project's one prompt encoder (`models.prompts.encode_example`) and handed to
TRL already tokenised, so the prompt DPO trains on is, token for token, the prompt `models.generate`
feeds the model for this defense (`struq_prompt`), and the completions are encoded exactly as SFT targets
(text + eos, eos = the end-of-turn token). Training goes through `training.trainer.run_training` (same callbacks,
checkpoint layout, resume and NaN/OOM handling as every other model): `SecAlignTrainer` accepts the
TrainingArguments it builds and converts them into an equivalent DPOConfig.

Reference model (DESIGN.md s.9: a bare `ref_model=None` makes TRL reload the policy by name, which a
config-built model does not have): the reference log-probabilities are precomputed once, by the initial
policy, before training (`precompute_ref_log_probs`; with LoRA, TRL disables the adapter for them). That
needs no second model in memory and drops the reference forward from every step (~30% of a step here).
"""
from __future__ import annotations

import dataclasses
import shutil
import warnings
from typing import Sequence

from causal_lib.config import Config
from causal_lib.core import distributed
from causal_lib.defenses.cards import write_model_card
from causal_lib.defenses.struq import (
    RESERVED_TOKENS,
    check_data_recipe,
    injected_mixture,
    load_base,
    prepare_struq_model,
    struq_prompt,
    train_records,
    validation_score_fn,
    view_records,  # noqa: F401 - SecAlign's model reads StruQ's structured prompt
)
from causal_lib.models.prompts import answer_ids, encode_example, prompt_text
from causal_lib.training import selection
from causal_lib.training.examples import make_pairs
from causal_lib.training.trainer import run_training

# SecAlign's injection mixture.
SECALIGN_COMPLETION_SHARE = 0.1


ID_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _has_rejected(r) -> bool:
    return bool(r.injected_target) and r.injected_target != r.target


def secalign_pairs(records: Sequence, tokenizer, max_length: int, seed: int = 0,
                   completion_share: float = SECALIGN_COMPLETION_SHARE, data: str = "matched") -> tuple[list[dict], dict]:
    """Preference samples over the TRAIN records -> (pairs, stats).

    One injected input per clean training item (SecAlign injects every training sample; see
    struq.injected_mixture) whose injection has an answer of its own, different from O*. Each pair:
    prompt_ids (the StruQ prompt of the injected input, its data cut so that prompt + the longer completion
    fit `max_length`), chosen_ids / rejected_ids (O* / O_inj + eos), and the texts for inspection.
    data="matched" (the default rows): the injected twin of every (clean, injected) pair of the training contract."""
    check_data_recipe(data)
    clean = [r for r in records if r.kind == "clean" and not r.held_out]
    if not clean:
        raise ValueError("SecAlign: no clean training records (kind='clean') in the records given")
    if data == "matched":
        # every pair's injected twin: DPO needs a rejected answer, so where the SFT defenses train a slot on its clean
        # item SecAlign keeps the injected one (its SFT term, train.dpo_sft_weight, trains O* on it); one preference
        # pair per pair of the contract = the same number of optimiser steps
        pairs = make_pairs(records)
        picked = [inj for _, inj in pairs if _has_rejected(inj)]
        # a pair whose injection has no answer of its own (or O* itself) has no rejected side: counted, so the
        # training table shows where SecAlign's steps fall short of the contract's
        stats = {"source": "matched", "n_clean": 0, "n_injected": len(picked), "n_total": len(picked),
                 "n_dropped_no_rejected": len(pairs) - len(picked),
                 "families": sorted({r.family for r in picked if r.family})}
    else:
        picked, stats = injected_mixture(records, clean, completion_share, seed, require=_has_rejected)
    if not picked:
        raise ValueError("SecAlign: no injected training records with an injected target (O_inj) different from O*")
    eos = [tokenizer.eos_token_id]
    pairs = []
    for r in picked:
        s, u = struq_prompt(r, tokenizer)
        # Completions encoded exactly as encode_example encodes SFT targets: the text's ids + eos.
        chosen = answer_ids(tokenizer, r.target) + eos
        rejected = answer_ids(tokenizer, r.injected_target) + eos
        prompt = encode_example(tokenizer, s, u, max_length=max_length - max(len(chosen), len(rejected)))
        pairs.append({"prompt_ids": prompt["input_ids"], "chosen_ids": chosen, "rejected_ids": rejected,
                      "id": r.id, "family": r.family, "goal": r.goal, "truncated": prompt["truncated"],
                      "prompt": prompt_text(tokenizer, s, u), "chosen": r.target, "rejected": r.injected_target})
    stats["n_pairs"] = len(pairs)
    stats["n_truncated"] = sum(p["truncated"] for p in pairs)
    return pairs, stats


def preference_dataset(pairs: Sequence[dict]):
    """datasets.Dataset of the token ids only (what TRL's preference collator reads)."""
    from datasets import Dataset

    return Dataset.from_list([{k: list(p[k]) for k in ID_KEYS} for p in pairs])


def dpo_config_from(args, **dpo_kwargs):
    """A trl.DPOConfig with every TrainingArguments value of `args` (so DPO runs with exactly the settings
    run_training chose: epochs, lr, schedule, batch, seed, precision, logging, saving) plus `dpo_kwargs`."""
    from transformers import TrainingArguments
    from trl import DPOConfig

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)
          if f.init and hasattr(args, f.name)}
    kw.update(dpo_kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
        return DPOConfig(**kw)


def _make_trainer_cls():
    from trl import DPOTrainer

    class SecAlignTrainer(DPOTrainer):
        """DPOTrainer that plugs into training.trainer.run_training: takes its TrainingArguments (converted to a
        DPOConfig with `beta`), ignores its SFT collator (preference batches need TRL's own), and trains on
        pairs already tokenised by `secalign_pairs`."""

        def __init__(self, model=None, args=None, train_dataset=None, data_collator=None, callbacks=None, *,
                     processing_class, beta: float, ref_model=None, max_length: int | None = None,
                     precompute_ref: bool = True, sft_weight: float = 0.0, **kwargs):
            # sigmoid = SecAlign's DPO loss; an optional NLL on the chosen answer (TRL's "sft" loss type)
            losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]} if sft_weight > 0 else {}
            dpo_args = dpo_config_from(args, beta=beta, max_length=max_length, precompute_ref_log_probs=precompute_ref,
                                       disable_dropout=True, **losses)
            super().__init__(model=model, ref_model=ref_model, args=dpo_args, train_dataset=train_dataset,
                             processing_class=processing_class, callbacks=callbacks, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # Already tokenised by models.prompts.encode_example: re-tokenising text here could differ from what
            # evaluation feeds the model (control-token sanitising, truncation of the data).
            missing = [k for k in ID_KEYS if k not in dataset.column_names]
            if missing:
                raise ValueError(f"SecAlignTrainer expects pre-tokenised pairs (secalign_pairs); missing {missing}")
            return dataset

    return SecAlignTrainer


def shared_on_disk(ds, folder):
    """The preference dataset as files every process reads (several processes): TRL's reference pass is gathered
    from all ranks, written by the main one as a cache file beside the dataset's own files, and read by each rank
    after a barrier. An in-memory dataset's files live in each process's own temporary folder, where the other
    ranks do not find that cache; rank 0 writes the dataset once to `folder` (the run folder's), every rank maps it."""
    from datasets import load_from_disk

    def save():
        shutil.rmtree(folder, ignore_errors=True)  # this project's folder: an earlier run's dataset and cache
        ds.save_to_disk(str(folder))

    distributed.main_first(save)
    return load_from_disk(str(folder))


def dpo_learning_rate(cfg: Config) -> float:
    return cfg.train.dpo_learning_rate or cfg.train.learning_rate


def dpo_epochs(cfg: Config) -> float:
    return cfg.train.dpo_epochs or cfg.train.epochs


def train(cfg: Config, paths, base_model_dir=None, records=None, resume: bool = False, name: str = "secalign",
          data: str = "matched"):
    """Train SecAlign on the same base: StruQ front-end + DPO (beta = train.dpo_beta, lr =
    train.dpo_learning_rate or train.learning_rate, epochs = train.dpo_epochs or train.epochs) on the TRAIN
    records (default: the run's train split; data="matched": the causal method's pairs). -> TrainResult;
    checkpoints/<name>/{epoch_N, best_model} (best: training.selection's rule), metrics/train_<name>_log.jsonl,
    best_model/model_card.json."""

    model, tok, source = load_base(cfg, paths, base_model_dir)
    # The delimiters' rows stay at their initialisation under LoRA: TRL 1.16's DPO computes the LM head fused from
    # lm_head.weight, which fails on (and would bypass) peft's trainable-token wrapper of a tied head such as SmolLM2's
    model, tok = prepare_struq_model(cfg, model, tok, train_delimiters=False)
    records = train_records(cfg, paths, records)
    pairs, stats = secalign_pairs(records, tok, cfg.model.max_seq_length, seed=cfg.run.seed, data=data)
    ds = preference_dataset(pairs)
    if distributed.active():
        ds = shared_on_disk(ds, paths.checkpoints / f".{name}.preferences")
    lr, epochs = dpo_learning_rate(cfg), dpo_epochs(cfg)
    meta = {"defense": name, "data": data, "train_families": sorted({p["family"] for p in pairs if p["family"]}),
            "base": source, "reserved_tokens": list(RESERVED_TOKENS), "mixture": stats,
            "dpo_beta": cfg.train.dpo_beta, "dpo_sft_weight": cfg.train.dpo_sft_weight,
            "selection_rule": selection.SELECTION_RULE}
    result = run_training(
        cfg, paths, name, model, tok, ds, trainer_cls=_make_trainer_cls(), epochs=epochs,
        learning_rate=lr, score_fn=validation_score_fn(cfg, paths, tok), select_by=selection.SELECT_BY,
        higher_is_better=False, resume=resume, extra_meta=meta,
        trainer_kwargs={"processing_class": tok, "beta": cfg.train.dpo_beta, "ref_model": None,
                        "precompute_ref": True, "max_length": cfg.model.max_seq_length,
                        "sft_weight": cfg.train.dpo_sft_weight})
    if result.best_epoch is not None:
        write_model_card(paths.checkpoints / name / "best_model", cfg, {
            **meta, "method": "SecAlign (Chen et al. 2025): StruQ front-end + DPO, chosen O*, rejected O_inj",
            "epochs": epochs, "learning_rate": lr, "best_epoch": result.best_epoch,
            "train_seconds": result.train_seconds, "steps": result.steps, "n_train_pairs": len(ds),
            "metrics": {"validation": result.epochs.get(result.best_epoch, {})}})
    return result
