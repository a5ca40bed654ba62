"""The defenses the book compares (DESIGN.md s.5): one table, name -> what the defense is.

Each entry names the module that implements it; chapters 05/06/08, the training and evaluation CLIs and the
comparison iterate this table and call the module through the entry, so adding a defense is one module plus
one line below. A defense module may define:

    train(cfg, paths, resume=False) -> TrainResult   # trains its model into checkpoints/<name>/ (trained defenses)
    view_records(records, tokenizer) -> list         # the records as its model reads them (default: as they are)
    input_blocker(cfg, paths, model, tokenizer)       # -> block(records) -> list[bool] (input filters)

The table imports no module of the package (the entries are resolved when used), so that params validation
can read the names without loading models.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Defense:
    name: str
    label: str  # the name in tables and plots
    module: str | None = None  # the implementing module; None = the base model as it is
    trains: bool = False  # trains a model of its own in chapter 05 (otherwise it uses the base)
    # the plan's literature ASR (DESIGN.md s.5): shown only in a column labelled reference, never as measured
    reference_asr: float | None = None
    description: str = ""
    # keyword arguments for the module's train(): how an ablation differs from its method (hashable pairs)
    train_options: tuple[tuple[str, object], ...] = ()

    def _impl(self, attr: str):
        if self.module is None:
            return None
        return getattr(importlib.import_module(self.module), attr, None)

    def train_function(self):
        """(the module's train function, this entry's keyword arguments for it); ValueError for a defense that trains
        nothing. training.lr_search.train_defense runs it (over train.learning_rate_grid when set)."""
        fn = self._impl("train")
        if not self.trains or fn is None:
            raise ValueError(f"defense {self.name!r} trains no model of its own (it uses the base)")
        return fn, dict(self.train_options)

    def train(self, cfg, paths, resume: bool = False):
        """Train this defense's model once, with the params' learning rate (the book and the training CLI go
        through training.lr_search.train_defense, which adds the learning-rate grid)."""
        fn, options = self.train_function()
        return fn(cfg, paths, resume=resume, **options)

    def view_records(self, records, tokenizer) -> list:
        fn = self._impl("view_records")
        return list(records) if fn is None else fn(records, tokenizer)

    def input_blocker(self, cfg, paths, model, tokenizer):
        fn = self._impl("input_blocker")
        return None if fn is None else fn(cfg, paths, model, tokenizer)


# In report order. Adding a defense: its module, then one line here.
REGISTRY: dict[str, Defense] = {d.name: d for d in (
    Defense("none", "no defense", reference_asr=0.87, description="the undefended base model"),
    Defense("filter", "input filtering", "causal_lib.defenses.filters", reference_asr=0.62,
            description="the base behind detectors on the data (known-answer detection, a trained classifier)"),
    # StruQ and SecAlign train on the training contract's examples (issue 30): the causal method's pairs, every
    # training family, the same count and steps; their published 2-family recipes are the "original recipe" rows
    Defense("struq", "StruQ", "causal_lib.defenses.struq", trains=True, reference_asr=0.41,
            description="reserved delimiters + SFT with the original answer on the training contract's examples "
                        "(Chen et al. 2025)",
            train_options=(("name", "struq"), ("data", "matched"))),
    Defense("secalign", "SecAlign", "causal_lib.defenses.secalign", trains=True, reference_asr=0.34,
            description="DPO with chosen = original answer, rejected = the injection's answer, on the training "
                        "contract's injected inputs (Chen et al. 2025)",
            train_options=(("name", "secalign"), ("data", "matched"))),
    Defense("causal", "causal (ours)", "causal_lib.defenses.causal", trains=True,
            description="L_task + counterfactual invariance + HSIC d-separation on counterfactual pairs (DESIGN.md s.3)"),
    Defense("struq_original", "StruQ, original recipe", "causal_lib.defenses.struq", trains=True,
            description="StruQ's published mixture: naive and completion-style injections of the train split only",
            train_options=(("name", "struq_original"), ("data", "paper"))),
    Defense("secalign_original", "SecAlign, original recipe", "causal_lib.defenses.secalign", trains=True,
            description="SecAlign's published mixture: naive and completion-style injections of the train split only",
            train_options=(("name", "secalign_original"), ("data", "paper"))),
    # ablations of the causal method: the same pairs, data, schedule and epoch selection, parts of the loss off
    Defense("causal_sft", "adversarial SFT (causal, both weights 0)", "causal_lib.defenses.causal", trains=True,
            description="the causal recipe with lambda_causal = lambda_spurious = 0: L_task on the same pairs",
            train_options=(("name", "causal_sft"), ("lambda_causal", 0.0), ("lambda_spurious", 0.0),
                           ("kl_weight", 0.0))),
    Defense("causal_invariance", "causal, invariance term only", "causal_lib.defenses.causal", trains=True,
            description="the causal recipe with lambda_spurious = 0 (L_task + L_causal)",
            train_options=(("name", "causal_invariance"), ("lambda_spurious", 0.0))),
    Defense("causal_hsic_u", "causal, unbiased HSIC", "causal_lib.defenses.causal", trains=True,
            description="the causal recipe with L_spurious estimated by HSIC_u (no floor under independence)",
            train_options=(("name", "causal_hsic_u"), ("hsic_estimator", "unbiased"))),
    Defense("causal_hsic", "causal, HSIC term only", "causal_lib.defenses.causal", trains=True,
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
