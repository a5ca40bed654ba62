"""Derive a shipped base with the project's recipe: the embedded base (training/shipped_base.py) or the real
model's tuned base adapter (training/shipped_adapter.py):

    python -m causal_lib.training.derive_base --params params/base.yaml [--out FOLDER] [--resume] [--set key=value]
    python -m causal_lib.training.derive_base --params params/base_smollm2.yaml

trains the base from training text only (outputs/<run>/ holds its data, checkpoints and logs), evaluates it on the
validation split (what recipe choices may look at) and the test split (reported), and writes
causal_lib/base_model/ or causal_lib/base_model_smollm2/ (or FOLDER: a new or empty folder, or a previous shipped
base; anything else is refused before training) with its manifest. In the book, chapter 04 installs the shipped base
(base.source: shipped, the default) or trains one from the run's params (base.source: pretrain).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from causal_lib.core import run_folder
from causal_lib.core.run_folder import RunPaths
from causal_lib.config import Config
from causal_lib.data.names import check_params as check_data_names
from causal_lib.data.build import GENERATOR_VERSION, data_hash, ensure_dataset, training_fingerprint, world_fingerprint
from causal_lib.evaluation import literature
from causal_lib.evaluation.run import evaluate_defense
from causal_lib.training import shipped_adapter, shipped_base
from causal_lib.training.pretrain import base_checkpoint, curriculum_runs, train_base
from causal_lib.training.trainer import read_train_log


def base_metrics(summary: dict) -> dict:
    """The shipped base's measured figures (each rate with its 95% interval), for its manifest and README."""
    keys = ("benign_accuracy", "benign_accuracy_by_task", "asr", "asr_by_goal", "asr_by_axis", "asr_by_split",
            "capability_floor", "counts")
    return {k: summary[k] for k in keys if k in summary}


def manifest_common(params_file: str, cfg: Config, summary: dict, validation: dict) -> dict:
    """What every shipped base's manifest holds: its recipe and hash, the world and data it was trained on, its metrics
    on validation (what recipe choices may look at) and test (reported), the date and the re-derive command."""
    return {"recipe": str(params_file), "recipe_hash": shipped_base.recipe_hash(cfg),
            "params": shipped_base.base_recipe(cfg), "world_fingerprint": world_fingerprint(),
            "training_fingerprint": training_fingerprint(),
            "generator_version": GENERATOR_VERSION, "data_hash": data_hash(cfg),
            "metrics": base_metrics(summary), "metrics_validation": base_metrics(validation),
            "created": datetime.date.today().isoformat(),
            "rederive": f"python -m causal_lib.training.derive_base --params {params_file}"}


def training_environment(train_seconds: float) -> dict:
    return {"wall_seconds_this_call": round(train_seconds, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}


def stage_steps(cfg: Config, paths: RunPaths) -> list[dict]:
    """Steps and seconds of each training stage of the base (curriculum stages, then the whole corpus)."""
    out = []
    for name in curriculum_runs(cfg) + ["base"]:
        rows = read_train_log(paths, name)
        out.append({"stage": name, "steps": max((r.get("step", 0) for r in rows), default=0),
                    "seconds": max((r.get("train_runtime", 0.0) for r in rows), default=0.0)})
    return out


def derive(params_file: str, overrides: dict | None = None, out: Path | None = None, resume: bool = False) -> dict:
    """Train the base from `params_file` (base.source forced to pretrain), evaluate it on the test split and
    write the shipped folder (`out`, default causal_lib/base_model) with its manifest. Returns the manifest."""
    from causal_lib.book.lock import open_run_folder  # the book's one guard: run lock, params hash, no links
    from causal_lib.config import load_config

    overrides = {**(overrides or {}), "base.source": "pretrain"}
    cfg = load_config(params_file, overrides)
    check_data_names(cfg)  # the curriculum's tasks and the held-out families exist in the world
    shipped_base.check_out(Path(out) if out else (shipped_adapter.SHIPPED_ADAPTER_DIR if cfg.model.kind == "hf"
                                                  else shipped_base.SHIPPED_DIR))  # refused before the training
    with open_run_folder(cfg, Path(params_file)):
        cfg, paths = run_folder.start(params_file, overrides)
        if cfg.model.kind == "hf":
            return derive_adapter(params_file, cfg, paths, out, resume)
        return derive_tiny(params_file, cfg, paths, out, resume)


def derive_tiny(params_file: str, cfg: Config, paths: RunPaths, out: Path | None, resume: bool) -> dict:
    """The embedded base: pre-trained from scratch by the recipe, evaluated, written with its manifest."""
    t0 = time.perf_counter()
    ensure_dataset(cfg, paths)
    train_base(cfg, paths, resume=resume)
    train_seconds = time.perf_counter() - t0
    stages = stage_steps(cfg, paths)
    # validation (training content only) is what recipe choices may look at; the test split is reported only
    validation = evaluate_defense(cfg, paths, "none", split="val", use_cache=False)["summary"]
    summary = evaluate_defense(cfg, paths, "none", use_cache=False)["summary"]
    manifest = {
        **manifest_common(params_file, cfg, summary, validation),
        "model": {"kind": cfg.model.kind, "tiny": {k: getattr(cfg.model.tiny, k) for k in shipped_base._SHAPE_KEYS}},
        # seconds = the stages' own training time from their logs (a --resume call adds only what it trained)
        "training": {"stages": stages, "seconds": round(sum(st["seconds"] for st in stages), 1),
                     **training_environment(train_seconds)},
    }
    shipped_base.write_shipped(base_checkpoint(paths), Path(out) if out else shipped_base.SHIPPED_DIR, manifest)
    return manifest


def derive_adapter(params_file: str, cfg: Config, paths: RunPaths, out: Path | None, resume: bool) -> dict:
    """The real model's tuned base (training/shipped_adapter.py): LoRA instruction tuning on the world's training text,
    the merged model evaluated on validation and test, the adapter written with its manifest. Returns the manifest."""
    from causal_lib.models.checkpoints import tokenizer_hash
    from causal_lib.models.load import load_hf_model, resolved_dtype
    from causal_lib.training.pretrain import REAL_BASE_ADAPTER_RUN

    if not shipped_adapter.has_shipped_adapter(cfg):
        raise shipped_base.ShippedBaseError(f"{params_file}: a tuned base is derived for model.source: smollm2 only "
                                            f"(a model the project can identify by a file hash offline)")
    if cfg.train.base_epochs <= 0:
        raise shipped_base.ShippedBaseError(f"{params_file}: train.base_epochs is 0: nothing to derive")
    dest = Path(out) if out else shipped_adapter.SHIPPED_ADAPTER_DIR
    shipped_base.check_out(dest)  # refused before, not after, the training
    from causal_lib.models.smollm2 import Smollm2Missing

    try:
        identity = shipped_adapter.model_identity(cfg)
    except Smollm2Missing as e:
        raise shipped_base.ShippedBaseError(str(e)) from None
    t0 = time.perf_counter()
    ensure_dataset(cfg, paths)
    result = train_base(cfg, paths, resume=resume)
    train_seconds = time.perf_counter() - t0
    validation = evaluate_defense(cfg, paths, "none", split="val", use_cache=False)["summary"]
    summary = evaluate_defense(cfg, paths, "none", use_cache=False)["summary"]
    # beyond the world (eval.literature_items / utility_items / sep_items of the recipe): reported, never a choice
    realistic = literature.evaluate_realistic(cfg, paths, "none")["summary"] if literature.enabled(cfg) else None
    rows = read_train_log(paths, REAL_BASE_ADAPTER_RUN)
    tok = load_hf_model(dataclasses.replace(cfg.model, use_lora=False))[1]
    manifest = {
        **manifest_common(params_file, cfg, summary, validation),
        "model": identity, "tokenizer_hash": tokenizer_hash(tok),
        "lora": dataclasses.asdict(cfg.model.lora), "dtype": resolved_dtype(cfg.model),
        **({"metrics_realistic": realistic} if realistic else {}),
        "training": {"steps": result.steps, "stages": [{"stage": REAL_BASE_ADAPTER_RUN, "steps": result.steps,
                                                        "seconds": round(result.train_seconds, 1)}],
                     "seconds": round(max((r.get("train_runtime", 0.0) for r in rows), default=result.train_seconds), 1),
                     **training_environment(train_seconds)},
    }
    adapter = paths.checkpoints / REAL_BASE_ADAPTER_RUN / "best_model"
    shipped_adapter.write_shipped_adapter(adapter, dest, manifest)
    return manifest


def main(argv=None) -> int:
    from causal_lib.config import ConfigError, parse_overrides
    from causal_lib.core.run_folder import RunFolderError
    from causal_lib.book.common import BookError
    from causal_lib.models.load import ModelLoadError

    ap = argparse.ArgumentParser(prog="python -m causal_lib.training.derive_base", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=shipped_base.RECIPE, help="the base's recipe (default %(default)s)")
    ap.add_argument("--out", default=None, help="folder to write (default causal_lib/base_model, or "
                    "causal_lib/base_model_smollm2 for a real model); a new or empty folder or a previous shipped base")
    ap.add_argument("--resume", action="store_true", help="continue from the run folder's finished checkpoints")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params key")
    a = ap.parse_args(argv)
    try:
        m = derive(a.params, parse_overrides(a.set), a.out, a.resume)
    except (ConfigError, shipped_base.ShippedBaseError, ModelLoadError, BookError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    b, asr = m["metrics"]["benign_accuracy"], m["metrics"]["asr"]
    where = a.out or (shipped_adapter.SHIPPED_ADAPTER_DIR if "gguf_sha256" in m.get("model", {}) else shipped_base.SHIPPED_DIR)
    print(f"base written to {where}: benign {b['rate']:.1%} [{b['lo']:.1%}, {b['hi']:.1%}], "
          f"ASR {asr['rate']:.1%} [{asr['lo']:.1%}, {asr['hi']:.1%}], {m['training']['seconds'] / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
