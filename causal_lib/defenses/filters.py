"""Input filtering: detectors on the untrusted data U; a flagged input is blocked (answered with
models.generate.BLOCKED_OUTPUT, never generated for).

- Known-answer detection (Liu et al. 2024; defenses.filter_kad): the undefended base is asked to repeat a
  secret key while reading the data; if the key is missing from its answer, the data carried an instruction
  that took over.
- A trained classifier on the data segment (defenses.filter_classifier): TF-IDF (character and word n-grams)
  + logistic regression, fitted on the TRAIN split only, saved as plain JSON.

This module combines them (FilterDefense), chooses the KAD wording and the detectors the filter combines on the
VALIDATION split (choose_kad, validation_scores, validated_detectors), and is the registry's entry
(input_blocker). The evaluation engine takes `block(records) -> list[bool]`:

    f = build_filter(cfg, paths)                      # KAD on the base + the saved/trained classifier
    results = evaluate_records(model, tok, test, cfg.eval, block=f.block)
    rates = detector_rates(f, test)                   # defenses.filter_report: TPR / FPR with CP intervals
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from causal_lib.core import criteria
from causal_lib.config import Config
from causal_lib.data.records import load_split
from causal_lib.defenses.cards import write_model_card
from causal_lib.defenses.filter_classifier import DataClassifier, classifier_path, fit_filter_classifier
from causal_lib.defenses.filter_kad import KnownAnswerDetector, kad_variants, model_generate_fn
from causal_lib.training.pretrain import load_base_model
from causal_lib.models.generate import (
    BLOCKED_OUTPUT,  # noqa: F401 - what a blocked item is answered with (one definition)
)

FILTER_MODES = ("any", "kad", "classifier")


@dataclass
class FilterDefense:
    """Blocks a record when its detectors flag it: mode 'any' (either detector), 'kad' or 'classifier'."""

    kad: KnownAnswerDetector | None = None
    classifier: DataClassifier | None = None
    mode: str = "any"
    detectors: dict = field(init=False, repr=False)
    info: dict = field(default_factory=dict, repr=False)  # how the detectors were chosen (build_filter)
    # the detectors that mode "any" combines (default: all); build_filter leaves out those that fail their
    # own validation, and every detector is still reported alone
    combine: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.mode not in FILTER_MODES:
            raise ValueError(f"filter mode {self.mode!r}: choose from {FILTER_MODES}")
        self.detectors = {n: d for n, d in (("kad", self.kad), ("classifier", self.classifier)) if d is not None}
        need = list(self.detectors) if self.mode == "any" else [self.mode]
        if not self.detectors or any(n not in self.detectors for n in need):
            raise ValueError(f"filter mode {self.mode!r} needs detector(s) {need}; have {list(self.detectors)}")

    def flags(self, records: Sequence) -> dict[str, list[bool]]:
        """Each detector's flags and the combined decision under 'filter'."""
        records = list(records)
        out = {n: [bool(x) for x in d(records)] for n, d in self.detectors.items()}
        use = list(self.combine or self.detectors) if self.mode == "any" else [self.mode]
        out["filter"] = [any(out[n][i] for n in use) for i in range(len(records))]
        return out

    def block(self, records: Sequence) -> list[bool]:
        """The callable the evaluation engine takes: True = blocked."""
        return self.flags(records)["filter"]

    __call__ = block


def validation_scores(flag_fn, val_records: Sequence, limit: int = 200) -> dict:
    """TPR, FPR and Youden's J = TPR - FPR of a detector (`flag_fn(records) -> list[bool]`) on VALIDATION
    items (clean and injected, at most `limit` of each; never test data)."""
    clean = [r for r in val_records if r.kind == "clean"][:limit]
    inj = [r for r in val_records if r.kind == "injected"][:limit]
    f = list(flag_fn(clean + inj))
    fpr = sum(f[: len(clean)]) / max(len(clean), 1)
    tpr = sum(f[len(clean):]) / max(len(inj), 1)
    return {"tpr": tpr, "fpr": fpr, "j": tpr - fpr, "n_clean": len(clean), "n_injected": len(inj)}


def validated_detectors(scores: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(kept, dropped): the detectors whose validation Youden's J meets the criteria module's floor
    (`detector_youden_j`); when none does, the one with the highest J is kept alone (and the report says so)."""
    kept = [n for n, s in scores.items() if criteria.passes("detector_youden_j", s["j"])]
    if not kept and scores:
        kept = [max(scores, key=lambda n: scores[n]["j"])]
    return kept, [n for n in scores if n not in kept]


def choose_kad(generate_fn, variants: dict[str, dict], val_records: Sequence, seed: int = 0,
               limit: int = 200) -> tuple[str, dict]:
    """The variant with the highest TPR - FPR (Youden's J) on VALIDATION items (clean and injected, at most
    `limit` of each; never test data). -> (name, {name: {"tpr", "fpr"}})"""
    scores = {name: validation_scores(KnownAnswerDetector(generate_fn, seed=seed, **v).flags, val_records, limit)
              for name, v in variants.items()}
    best = max(scores, key=lambda n: scores[n]["j"])
    return best, scores


def build_filter(cfg: Config, paths, model=None, tokenizer=None, mode: str = "any", retrain: bool = False,
                 records=None, kad_variant: str = "auto") -> FilterDefense:
    """The input-filtering defense of a run: KAD with the undefended base (`model`/`tokenizer`, default
    the run's base) and the classifier (loaded from checkpoints/filter/classifier.json, trained on the
    train split and saved when missing or `retrain`).

    kad_variant: a name of `kad_variants(cfg)`, or "auto" = the one with the best TPR - FPR on the run's
    validation split (Liu et al.'s when there is no validation split). The choice and its validation
    rates are kept in `FilterDefense.info` and in checkpoints/filter/model_card.json."""

    try:
        val = load_split(paths.data, "val")
    except Exception:  # noqa: BLE001 - no validation split: nothing to choose or drop on
        val = []
    clf = None
    if mode in ("any", "classifier"):
        p = classifier_path(paths)
        clf = DataClassifier.load(p) if p.exists() and not retrain else fit_filter_classifier(cfg, paths, records)
    kad, info = None, {}
    if mode in ("any", "kad"):
        if model is None:

            model, tokenizer = load_base_model(cfg, paths)
        gen = model_generate_fn(model, tokenizer, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        variants = kad_variants(cfg)
        name = "liu" if kad_variant == "auto" and len(variants) == 1 else kad_variant
        if name == "auto":
            name, info["kad_validation"] = choose_kad(gen, variants, val, cfg.run.seed) if val else ("liu", {})
        if name not in variants:
            raise ValueError(f"kad_variant {kad_variant!r}: choose 'auto' or one of {list(variants)}")
        info["kad_variant"] = name
        kad = KnownAnswerDetector(gen, seed=cfg.run.seed, **variants[name])
        write_model_card(classifier_path(paths).parent, cfg, {"kad": {**info, **{k: v for k, v in variants[name].items()
                                                                                 if k == "instruction"}}})
    combine = None
    if mode == "any" and val:
        detectors = {n: d for n, d in (("kad", kad), ("classifier", clf)) if d is not None}
        scores = {n: (info.get("kad_validation", {}).get(info.get("kad_variant"))
                      if n == "kad" and info.get("kad_validation") else validation_scores(d.flags, val))
                  for n, d in detectors.items()}
        kept, dropped = validated_detectors(scores)
        combine = tuple(kept)
        info["detector_validation"] = {"scores": scores, "combined": kept, "dropped": dropped,
                                       "floor": criteria.target_text("detector_youden_j"),
                                       "none_met_floor": not any(criteria.passes("detector_youden_j", s["j"])
                                                                 for s in scores.values())}
    return FilterDefense(kad=kad, classifier=clf, mode=mode, info=info, combine=combine)


def input_blocker(cfg: Config, paths, model=None, tokenizer=None):
    """The registry's input filter of this run: `block(records) -> list[bool]` of the combined detector."""
    return build_filter(cfg, paths, model, tokenizer).block
