"""The causal defense: the objective (L_task + lambda_causal * L_causal + lambda_spurious * L_spurious on
counterfactual (clean, injected) pairs), the Trainer that optimises it, and `train`, which fine-tunes the
run's base on the train pairs and keeps the epoch that the training contract's rule picks (training.selection)."""
from __future__ import annotations

import dataclasses

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from causal_lib.config import Config
from causal_lib.data.records import load_split
from causal_lib.models.load import apply_lora, is_peft_model
from causal_lib.models.representation import representation
from causal_lib.core import distributed
from causal_lib.training import selection
from causal_lib.training.examples import PairDataset, TaskBatchSampler, make_pairs, training_slots, z_vocabulary
from causal_lib.training.losses import (MIN_GROUP_SIZE, causal_loss, hsic_loss, kl_along_response, task_loss,
                                        total_loss)
from causal_lib.training.pretrain import base_checkpoint, load_base_model
from causal_lib.training.trainer import TrainResult, check_finite, forward_for_labels, run_training
from causal_lib.stats.invariance import representation_metrics


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
    # On N processes the objective is the one-process objective on the global batch (core.distributed): the
    # batch-level terms see every rank's rows, with this rank's own rows carrying the gradient.
    n_proc = distributed.world_size()
    r_c_all, r_i_all = distributed.global_rows(r_c), distributed.global_rows(r_i)
    z_all = distributed.global_rows(torch.as_tensor(inputs["z"]))
    g_all = distributed.global_rows(torch.as_tensor(inputs["s_group"]).reshape(-1))
    # centred like the causal-stability metric: raw hidden states are anisotropic (cosines near 1)
    l_cos = causal_loss(r_c_all, r_i_all, center=True)
    # the KL along O* is a mean over this rank's pairs: DDP's average of the ranks' gradients is the global mean
    l_kl = (kl_along_response(out_c.logits, out_i.logits, lab_c, lab_i) if tc.kl_weight
            else torch.zeros((), device=l_cos.device))
    l_causal = l_cos + tc.kl_weight * l_kl
    unbiased = tc.hsic_estimator == "unbiased"
    l_spur = hsic_loss(r_i_all, z_all, groups=g_all, unbiased=unbiased)
    _, parts = total_loss(l_task, l_causal, l_spur, tc.lambda_causal, tc.lambda_spurious)
    for name in ("task", "causal", "spurious", "total"):
        check_finite(torch.tensor(parts[name]), f"L_{name}")
    # what the backward pass optimises: the token-weighted task loss (the ranks' mean of it is the global token mean),
    # the KL as it is, and the global-batch terms with their gradient scaled by N (DDP averages N gradients that each
    # reach only their own rows) but their value kept, so the logged loss is the objective; in one process L itself
    share = 1.0
    if n_proc > 1:
        mine = float((lab_i[:, 1:] != -100).sum())
        share = mine * n_proc / max(distributed.all_sum(mine), 1.0)
    loss = (share * l_task + tc.lambda_causal * (_grad_times(l_cos, n_proc) + tc.kl_weight * l_kl)
            + tc.lambda_spurious * _grad_times(l_spur, n_proc))
    if n_proc > 1:  # logged as the ranks' mean (CausalTrainer.log): the weighted values average to the global ones
        parts["task"], parts["total"] = float(share * l_task.detach()), float(loss.detach())
    parts.update(spurious_diagnostics(r_i_all, z_all, g_all, unbiased))
    return loss, parts, out_i


def _grad_times(x: torch.Tensor, k: int) -> torch.Tensor:
    """x's value with k times its gradient (x itself for k = 1)."""
    return x if k == 1 else x + (k - 1) * (x - x.detach())


@torch.no_grad()
def spurious_diagnostics(r: torch.Tensor, z, groups, unbiased: bool) -> dict:
    """What L_spurious can say at this step (issue 32): `spurious_floor`, the same estimate with Z shuffled within
    the batch (what it reads when R is independent of Z; the biased estimator's floor is > 0), and
    `spurious_active`, 1 when some task group of the batch is large enough to be estimated at all (else the term is
    0 whatever R does)."""
    z = torch.as_tensor(z)
    g = torch.as_tensor(groups).reshape(-1)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(int(len(z)) * 7919))
    floor = hsic_loss(r.detach(), z[perm], groups=g, unbiased=unbiased)
    need = max(4 if unbiased else 2, MIN_GROUP_SIZE)
    active = bool((torch.bincount(g - g.min()) >= need).any()) if len(g) else False
    return {"spurious_floor": float(floor), "spurious_active": float(active)}


# How the pairs are batched: "by_length" (the default, as every SFT defense's examples: HF's LengthGroupedSampler,
# batches of pairs of similar length; with the realistic items in training, random batches of 8 pairs were half
# padding on SmolLM2: 124,568 padded tokens per epoch for 63,593 real ones, 63,832 with this sampler) or "by_task"
# (TaskBatchSampler: each batch from one task group, so that L_spurious's groups are large enough to be estimated;
# issue 32)
BATCHES = ("by_length", "by_task")


class CausalTrainer(Trainer):
    """L = L_task + lambda_causal * L_causal + lambda_spurious * L_spurious (DESIGN.md s.3)."""

    def __init__(self, *args, cfg: Config, batches: str = "by_length", **kwargs):
        if batches not in BATCHES:
            raise ValueError(f"batches={batches!r}: choose from {', '.join(BATCHES)}")
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.batches = batches
        self._parts_sum: dict[str, float] = {}
        self._parts_n = 0

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.batches == "by_length":
            # a pair is as long as its longer side (both sides are padded together); the global batch is grouped, as
            # the SFT trainer's, so that any number of processes sees the same examples per optimizer step
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps
                                        * self.args.world_size,
                                        lengths=[max(len(it["clean_input_ids"]), len(it["injected_input_ids"]))
                                                 for it in ds.items])
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return TaskBatchSampler([item["s_group"] for item in ds.items],
                                self.args.per_device_train_batch_size * distributed.world_size(), seed=seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, parts, out_i = causal_objective(model, inputs, self.cfg)
        for name in ("task", "causal", "spurious", "total", "spurious_floor", "spurious_active"):
            self._parts_sum[f"loss_{name}"] = self._parts_sum.get(f"loss_{name}", 0.0) + parts[name]
        self._parts_n += 1
        return (loss, out_i) if return_outputs else loss

    def log(self, logs, start_time=None):
        if self._parts_n and "loss" in logs:  # the mean over processes, as the Trainer's own "loss" (one process: as is)
            logs.update(distributed.all_mean({k: v / self._parts_n for k, v in self._parts_sum.items()}))
            self._parts_sum, self._parts_n = {}, 0
        super().log(logs, start_time)


def validation_pairs(paths, limit: int | None = None) -> list[tuple]:

    pairs = make_pairs(load_split(paths.data, "val"))
    return pairs[:limit] if limit else pairs


def train(cfg: Config, paths, resume: bool = False, name: str = "causal", batches: str = "by_length",
          kl_weight: float | None = None, **loss_weights) -> TrainResult:
    """Fine-tune the base with L_task + lambda_causal L_causal + lambda_spurious L_spurious on the train pairs;
    best_model = the epoch of lowest validation loss on O* (training.selection, the rule of every defense).

    `name` is the defense (checkpoints/<name>/); `loss_weights` (lambda_causal, lambda_spurious, kl_weight,
    hsic_estimator)
    replace the params' weights for this model only: the registry's ablations train the same pairs, data and
    schedule with parts of the loss switched off. `batches`: "by_length" or "by_task" (BATCHES: the same pairs and
    steps, batches of similar length or each from one task group). `kl_weight` is named so that train.kl_weight_grid can choose it on
    validation (training.lr_search) where the registry entry does not fix it."""
    if kl_weight is not None:
        loss_weights["kl_weight"] = kl_weight
    if loss_weights:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **loss_weights))

    model, tok = load_base_model(cfg, paths, trainable=True)
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
    val_loss = selection.validation_score_fn(cfg, load_split(paths.data, "val"), tok)

    def score(m):
        # the contract's rule picks the epoch (validation loss on O*); causal stability and epsilon_causal are
        # recorded beside it, labelled: they are what the invariance term optimises, so they cannot choose
        r = representation_metrics(m, tok, val, cfg, n_boot=100)
        return {**(val_loss(m) if val_loss else {}), "causal_stability_optimised": r["causal_stability"]["value"],
                "epsilon_causal": r["epsilon_causal"]["value"]}

    n_injected = sum(t is not c for c, t in training_slots(pairs, cfg.train.clean_pair_fraction, cfg.run.seed))
    return run_training(cfg, paths, name, model, tok, ds, trainer_cls=CausalTrainer,
                        trainer_kwargs={"cfg": cfg, "batches": batches},
                        epochs=cfg.train.epochs, learning_rate=cfg.train.learning_rate, score_fn=score,
                        select_by=selection.SELECT_BY, higher_is_better=False,
                        resume=resume, extra_meta={"defense": name, **loss_weights, "batches": batches,
                                                   "kl_weight": cfg.train.kl_weight,  # the table's KL column
                                                   "train_families": sorted({i.family for _, i in pairs if i.family}),
                                                   # the training table of the comparison (issue 30): one example per
                                                   # pair (training.examples.training_slots), its clean twin the
                                                   # invariance target
                                                   "n_injected": n_injected, "n_clean": len(pairs) - n_injected,
                                                   "clean_twins": len(pairs),
                                                   "learning_rate": cfg.train.learning_rate, "epochs": cfg.train.epochs,
                                                   "selection_rule": selection.SELECTION_RULE,
                                                   # relative to the run folder: a shared run stays readable
                                                   "base": base_checkpoint(paths).relative_to(paths.root).as_posix()})
