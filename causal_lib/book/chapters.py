"""The book's chapters in one table: what each chapter reads (its upstream chapters) and what it writes (its
products), and the one spelling of a chapter run's label.

A chapter is notebooks/<stem>.py. It runs once, once per variant (05_train once per trained defense) and, when
per_seed, once more per seed replica (run.seeds) in outputs/<run>/seeds/seed_<s>/. Each of those papermill runs
is a chapter run, named by its label:

    chapter_label("05_train", "causal", 1) == "05_train[causal]@seed1"
    parse_label("05_train[causal]@seed1") == ("05_train", "causal", 1)

`upstream`: the chapters whose products this chapter reads. A variant reads the upstream variants with the same
parameters (06_epoch_validation[causal] reads 05_train[causal]; a chapter without variants reads them all), a seed
replica reads its own seed's replicas of per-seed chapters, and "<stem>@seeds" names every seed replica of a
chapter (the main run of 08 reads each replica's comparison). `products`: the files and folders the chapter run
writes, relative to its own run folder (a replica's seeds/seed_<s>/), glob patterns allowed, `{defense}` filled
from the run's parameters. Files every chapter writes into (metrics/verdicts.json, the sectioned reports
WEEK1_SETUP_REPORT.md and WEEK2_TRAINING_REPORT.md) are nobody's product; a few products are also written by an
earlier chapter (04 caches metrics/eval_none.json, 07 eval_<defense>.json, both matched by 08's eval_*.json; 04 of a
seed replica builds its data/), which is sound because every writer runs before the chapters that read them,
and 06 re-pointing checkpoints/<defense>/best_model changes a product of 05 (book.plan hashes upstream products
after a chapter ran, so that is part of what 06's dependents saw). --resume reruns a chapter run whose upstream
products changed since it ran (book.plan).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from causal_lib.config import PROJECT_ROOT, Config
from causal_lib.core.run_folder import SEEDS_DIR
from causal_lib.data.build import data_seed
from causal_lib.defenses import registry

NOTEBOOKS = PROJECT_ROOT / "notebooks"

SEED_REPLICAS = "@seeds"  # upstream "<stem>@seeds": every seed replica of that chapter (main run only)


def chapter_label(stem: str, variant: str | None = None, seed: int | None = None) -> str:
    """The label of a chapter run: ("05_train", "causal", 1) -> "05_train[causal]@seed1"; no variant, no seed
    (the main run) -> the stem alone. Notebooks record their verdicts under it (reports.record_verdict)."""
    return stem + (f"[{variant}]" if variant else "") + (f"@seed{seed}" if seed is not None else "")


_LABEL = re.compile(r"(?P<stem>[^\[\]@]+)(?:\[(?P<variant>[^\[\]@]+)\])?(?:@seed(?P<seed>\d+))?")


def parse_label(label: str) -> tuple[str, str | None, int | None]:
    """The inverse of chapter_label: (stem, variant or None, seed or None for the main run); ValueError when
    `label` is not one."""
    m = _LABEL.fullmatch(label)
    if m is None:
        raise ValueError(f"{label!r} is not a chapter run's label (like 05_train[causal]@seed1)")
    return m["stem"], m["variant"], int(m["seed"]) if m["seed"] is not None else None


def label_file_stem(label: str) -> str:
    """The file stem of a chapter run's executed notebook and HTML: "05_train[causal]@seed1" ->
    "05_train__causal__seed1"."""
    stem, variant, seed = parse_label(label)
    return stem + (f"__{variant}" if variant else "") + (f"__seed{seed}" if seed is not None else "")


@dataclass(frozen=True)
class Chapter:
    stem: str  # notebooks/<stem>.py
    # Several papermill runs of one chapter (05_train once per defense): label suffix -> parameters.
    variants: Callable[[Config], list[tuple[str, dict]]] | None = None
    # Runs again for every seed replica (run.seeds), before the main seed's run of the same chapter, so
    # that the main run's 08 finds every replica's comparison.
    per_seed: bool = False
    upstream: tuple[str, ...] = ()  # stems of the chapters it reads; "<stem>@seeds": that chapter's seed replicas
    products: tuple[str, ...] = ()  # what it writes, relative to its run folder; globs; {defense} from its parameters

    @property
    def number(self) -> str:
        return self.stem[:2]


def _per_trained_defense(cfg: Config) -> list[tuple[str, dict]]:
    return [(d, {"defense": d}) for d in cfg.train.defenses if d in registry.trained_names()]


DATA = "02_dataset_validation"
BASE = "04_base_model"
TRAIN = "05_train"
EPOCHS = "06_epoch_validation"

CHAPTERS: list[Chapter] = [
    Chapter("01_setup_check", products=("metrics/setup.json",)),
    Chapter(DATA, products=("data/manifest.json", "data/*.jsonl", "metrics/dataset.json",
                            "reports/WEEK1_DATASET_REPORT.md")),
    Chapter("03_dry_run", upstream=(DATA,),
            products=("metrics/dry_run.json", "metrics/train_dry_run_log.jsonl", "checkpoints/dry_run")),
    # the base (trained, or the shipped one installed), its tokenizer, its curriculum stages or LoRA tuning
    # (base_copy_warmup, base_curriculum_<i>, base_lora); metrics/eval_none*.json is 08's evaluation cache
    Chapter(BASE, per_seed=True, upstream=(DATA,),
            products=("checkpoints/base*", "checkpoints/tokenizer", "metrics/base.json", "metrics/base_manifest.json",
                      "metrics/train_base*_log.jsonl")),
    Chapter(TRAIN, variants=_per_trained_defense, per_seed=True, upstream=(DATA, BASE),
            products=("checkpoints/{defense}", "checkpoints/{defense}@lr*", "checkpoints/{defense}@kl*",
                      "metrics/train_{defense}.json", "metrics/train_{defense}_log.jsonl",
                      "metrics/train_{defense}@lr*_log.jsonl", "metrics/train_{defense}@kl*_log.jsonl",
                      "metrics/lr_search_{defense}.json")),
    Chapter(EPOCHS, variants=_per_trained_defense, per_seed=True, upstream=(DATA, TRAIN),
            products=("metrics/epochs_{defense}.json",)),
    Chapter("07_causal_verification", upstream=(DATA, BASE, TRAIN, EPOCHS),
            products=("metrics/verification.json", "reports/WEEK3_VERIFICATION_REPORT.md")),
    Chapter("08_attack_evaluation", per_seed=True,
            upstream=(DATA, BASE, TRAIN, EPOCHS, "08_attack_evaluation" + SEED_REPLICAS),
            products=("metrics/eval_*.json", "metrics/eval_*_items.jsonl", "metrics/realistic_*.json",
                      "metrics/comparison.json", "metrics/seeds.json", "metrics/seed_paired.json", "checkpoints/filter",
                      "reports/WEEK4_COMPARISON_TABLE.md", "reports/WEEK4_EVALUATION_REPORT.md")),
    Chapter("09_phase2_report", upstream=(TRAIN, "07_causal_verification", "08_attack_evaluation"),
            products=("metrics/phase2.json", "reports/PHASE2_COMPLETION_REPORT.md", "reports/PROJECT_STATUS.md")),
]


@dataclass
class ChapterRun:
    chapter: Chapter
    label: str  # chapter_label(): "05_train[causal]", "05_train[causal]@seed1" for a seed replica
    parameters: dict = field(default_factory=dict)
    seed: int | None = None  # a seed replica's seed; None = the main run

    @property
    def source(self) -> Path:
        return NOTEBOOKS / f"{self.chapter.stem}.py"

    @property
    def out_stem(self) -> str:
        return label_file_stem(self.label)

    def folder(self, root: Path) -> Path:
        """Its run folder, given the run's: a seed replica's is <root>/seeds/seed_<s>/."""
        return Path(root) if self.seed is None else Path(root) / SEEDS_DIR / f"seed_{self.seed}"

    def products(self) -> list[str]:
        """Its chapter's product patterns with its parameters filled in ({defense})."""
        return [p.format(**self.parameters) for p in self.chapter.products]

    def overrides(self, cfg: Config, overrides: dict) -> dict:
        """The chapter's params overrides: a seed replica trains with its own seed on the main run's data,
        in outputs/<run>/seeds/seed_<s>/."""
        if self.seed is None:
            return overrides
        return {**overrides, "run.seed": self.seed, "run.seeds": [], "data.seed": data_seed(cfg),
                "run.name": f"{cfg.run.name}/{SEEDS_DIR}/seed_{self.seed}"}


def chapter_runs(cfg: Config) -> list[ChapterRun]:
    """Every chapter run of the book for `cfg`, in the order they run."""
    runs = []
    for ch in CHAPTERS:
        for variant, params in [(None, {})] if ch.variants is None else ch.variants(cfg):
            if ch.per_seed:
                runs += [ChapterRun(ch, chapter_label(ch.stem, variant, s), params, s) for s in cfg.run.seeds]
            runs.append(ChapterRun(ch, chapter_label(ch.stem, variant), params))
    return runs


def upstream_runs(run: ChapterRun, runs: list[ChapterRun]) -> list[ChapterRun]:
    """The chapter runs among `runs` whose products `run` reads, as its chapter's `upstream` declares them."""
    out = []
    for up in run.chapter.upstream:
        stem, replicas = up.removesuffix(SEED_REPLICAS), up.endswith(SEED_REPLICAS)
        for u in runs:
            if u.chapter.stem != stem or u is run:
                continue
            if replicas:
                if run.seed is not None or u.seed is None:
                    continue
            elif u.seed != (run.seed if u.chapter.per_seed else None):
                continue
            if any(run.parameters[k] != u.parameters[k] for k in run.parameters.keys() & u.parameters.keys()):
                continue
            out.append(u)
    return out


def table_problems(chapters: list[Chapter], runs: list[ChapterRun]) -> list[str]:
    """What is wrong with the table (empty when nothing): an upstream that is no chapter or does not come before,
    a product that is not a plain relative path or names a parameter its runs lack, an upstream run after its
    dependent in `runs` (chapter_runs' order)."""
    problems, seen, by_stem = [], [], {c.stem: c for c in chapters}
    for ch in chapters:
        for up in ch.upstream:
            stem = up.removesuffix(SEED_REPLICAS)
            if up.endswith(SEED_REPLICAS):
                if stem not in (*seen, ch.stem) or not by_stem[stem].per_seed:
                    problems.append(f"{ch.stem}: upstream {up}: the seed replicas of a chapter that runs per seed, "
                                    f"itself or one before it")
            elif stem not in seen:
                problems.append(f"{ch.stem}: upstream {up} is not a chapter before it")
        for p in ch.products:
            if p.startswith("/") or ".." in Path(p).parts or "\\" in p:
                problems.append(f"{ch.stem}: product {p} is not a path inside the run folder")
        seen.append(ch.stem)
    order = {r.label: i for i, r in enumerate(runs)}
    for r in runs:
        names = {n for p in r.chapter.products for _, n, _, _ in string.Formatter().parse(p) if n}
        if names - r.parameters.keys():
            problems.append(f"{r.label}: products name {sorted(names - r.parameters.keys())}, not its parameters")
        problems += [f"{r.label}: upstream {u.label} runs after it" for u in upstream_runs(r, runs)
                     if order[u.label] >= order[r.label]]
    return problems
