"""The defenses the book compares (DESIGN.md s.5): one table, name -> what the defense is.

Each entry holds the function that loads its implementation (a module, or any object with the functions below);
chapters 05/06/08, the training and evaluation CLIs and the comparison iterate this table and call the
implementation through the entry, so adding a defense is one module plus one line below. An implementation may
define:

    train(cfg, paths, resume=False) -> TrainResult   # trains its model into checkpoints/<name>/ (trained defenses)
    view_records(records, tokenizer) -> list         # the records as its model reads them (default: as they are)
    input_blocker(cfg, paths, model, tokenizer)       # -> block(records) -> list[bool] (input filters)

The loaders below are plain imports, to be read and followed like any other; they run when a defense is used,
because the implementations load torch and transformers (4-14 s on the 2-core machine), while the table itself is
read by params checks, labels and reports that need none of it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from causal_lib.config import Config, ConfigError
from causal_lib.data.names import check_params as check_data_names


def _filters():
    from causal_lib.defenses import filters
    return filters


def _struq():
    from causal_lib.defenses import struq
    return struq


def _secalign():
    from causal_lib.defenses import secalign
    return secalign


def _causal():
    from causal_lib.defenses import causal
    return causal


@dataclass(frozen=True)
class Defense:
    name: str
    label: str  # the name in tables and plots
    implementation: Callable[[], object] | None = None  # loads the implementation; None = the base model as it is
    trains: bool = False  # trains a model of its own in chapter 05 (otherwise it uses the base)
    # the plan's literature ASR (DESIGN.md s.5): shown only in a column labelled reference, never as measured
    reference_asr: float | None = None
    description: str = ""
    # keyword arguments for the implementation's train(): how an ablation differs from its method (hashable pairs)
    train_options: tuple[tuple[str, object], ...] = ()
    # the row this one is compared with in the ablation table: the same training with the causal terms off
    control: str | None = None

    def _impl(self, attr: str):
        if self.implementation is None:
            return None
        return getattr(self.implementation(), attr, None)

    def train_function(self):
        """(the implementation's train function, this entry's keyword arguments for it); ValueError for a defense
        that trains nothing."""
        fn = self._impl("train")
        if not self.trains or fn is None:
            raise ValueError(f"defense {self.name!r} trains no model of its own (it uses the base)")
        return fn, dict(self.train_options)

    def train(self, cfg, paths, resume: bool = False):
        """Train this defense's model as chapter 05 and the training CLI do: once per rate of
        train.learning_rate_grid, keeping the rate chosen on validation (training.lr_search), or once as given."""
        from causal_lib.training.lr_search import train_over_grid

        fn, options = self.train_function()
        return train_over_grid(fn, cfg, paths, self.name, resume=resume, **options)

    def view_records(self, records, tokenizer) -> list:
        fn = self._impl("view_records")
        return list(records) if fn is None else fn(records, tokenizer)

    def input_blocker(self, cfg, paths, model, tokenizer):
        fn = self._impl("input_blocker")
        return None if fn is None else fn(cfg, paths, model, tokenizer)


# In report order. Adding a defense: its module, then one line here.
REGISTRY: dict[str, Defense] = {d.name: d for d in (
    Defense("none", "no defense", reference_asr=0.87, description="the undefended base model"),
    Defense("filter", "input filtering", _filters, reference_asr=0.62,
            description="the base behind detectors on the data (known-answer detection, a trained classifier)"),
    # StruQ and SecAlign train on the training contract's examples (issue 30): the causal method's pairs, every
    # training family, the same count and steps; their published 2-family recipes are the "original recipe" rows
    Defense("struq", "StruQ", _struq, trains=True, reference_asr=0.41,
            description="reserved delimiters + SFT with the original answer on the training contract's examples "
                        "(Chen et al. 2025)",
            train_options=(("name", "struq"), ("data", "matched"))),
    Defense("secalign", "SecAlign", _secalign, trains=True, reference_asr=0.34,
            description="DPO with chosen = original answer, rejected = the injection's answer, on the training "
                        "contract's injected inputs (Chen et al. 2025)",
            train_options=(("name", "secalign"), ("data", "matched"))),
    Defense("causal", "causal (ours)", _causal, trains=True, control="causal_sft",
            description="L_task + counterfactual invariance + HSIC d-separation on counterfactual pairs (DESIGN.md s.3)"),
    Defense("struq_original", "StruQ, original recipe", _struq, trains=True,
            description="StruQ's published mixture: naive and completion-style injections of the train split only",
            train_options=(("name", "struq_original"), ("data", "paper"))),
    Defense("secalign_original", "SecAlign, original recipe", _secalign, trains=True,
            description="SecAlign's published mixture: naive and completion-style injections of the train split only",
            train_options=(("name", "secalign_original"), ("data", "paper"))),
    # ablations of the causal method: the same pairs, data, schedule and epoch selection, parts of the loss off
    Defense("causal_sft", "adversarial SFT (causal, both weights 0)", _causal, trains=True,
            description="the causal recipe with lambda_causal = lambda_spurious = 0: L_task on the same pairs",
            train_options=(("name", "causal_sft"), ("lambda_causal", 0.0), ("lambda_spurious", 0.0),
                           ("kl_weight", 0.0))),
    Defense("causal_invariance", "causal, invariance term only", _causal, trains=True, control="causal_sft",
            description="the causal recipe with lambda_spurious = 0 (L_task + L_causal)",
            train_options=(("name", "causal_invariance"), ("lambda_spurious", 0.0))),
    Defense("causal_hsic_u", "causal, unbiased HSIC", _causal, trains=True, control="causal_sft",
            description="the causal recipe with L_spurious estimated by HSIC_u (no floor under independence)",
            train_options=(("name", "causal_hsic_u"), ("hsic_estimator", "unbiased"))),
    # task-grouped batches (issue 32): L_spurious estimated on every step; the control gets the same batches
    Defense("causal_by_task", "causal, task-grouped batches", _causal, trains=True, control="causal_sft_by_task",
            description="the causal recipe on batches of one task group each (L_spurious's groups estimable)",
            train_options=(("name", "causal_by_task"), ("batches", "by_task"))),
    Defense("causal_sft_by_task", "adversarial SFT, task-grouped batches", _causal, trains=True,
            description="causal_sft on the same task-grouped batches: the control of causal_by_task",
            train_options=(("name", "causal_sft_by_task"), ("lambda_causal", 0.0), ("lambda_spurious", 0.0),
                           ("kl_weight", 0.0), ("batches", "by_task"))),
    Defense("causal_hsic", "causal, HSIC term only", _causal, trains=True, control="causal_sft",
            description="the causal recipe with lambda_causal = 0 (L_task + L_spurious)",
            train_options=(("name", "causal_hsic"), ("lambda_causal", 0.0), ("kl_weight", 0.0))),
)}


def register(defense: Defense) -> Defense:
    """Add (or replace) a defense at run time, e.g. from a test or a notebook of one's own."""
    REGISTRY[defense.name] = defense
    return defense


def names() -> list[str]:
    return list(REGISTRY)


def trained_names() -> list[str]:
    return [d.name for d in REGISTRY.values() if d.trains]


def get(name: str) -> Defense:
    if name not in REGISTRY:
        raise ValueError(f"unknown defense {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def label(name: str) -> str:
    return REGISTRY[name].label if name in REGISTRY else name


def evaluated(train_defenses) -> list[str]:
    """The defenses a run evaluates, in report order: every untrained one and the trained ones it trains."""
    return [d.name for d in REGISTRY.values() if not d.trains or d.name in train_defenses]


def check_params(cfg: Config) -> None:
    """The params' names checked against what the floors above config define (config.py cannot import them): the
    trained defenses of train.defenses, the world's tasks and attack families. The book runner and the CLIs run it
    before anything else; ConfigError is one line naming the key and the choices."""
    for d in cfg.train.defenses:
        if d not in trained_names():
            close = difflib.get_close_matches(d, trained_names(), n=1)
            raise ConfigError(f"train.defenses: unknown defense {d!r}" + (f" (did you mean {close[0]!r}?)" if close
                              else "") + f"; choose from the trained defenses {trained_names()}")
    check_data_names(cfg)
