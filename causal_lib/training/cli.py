"""Train one model outside the notebooks, e.g. on several GPUs with accelerate:

    accelerate launch --num_processes 4 -m causal_lib.training --params params/gpu_qlora_7b.yaml --defense causal
    python -m causal_lib.training --params params/default.yaml --defense base

It runs exactly what chapters 04/05 run (same functions, same checkpoints under outputs/<run>/checkpoints/).
Afterwards `python -m causal_lib.book run --params ... --resume` executes the chapters, whose training
calls then resume from the finished trainer checkpoint instead of training again.
"""
from __future__ import annotations

import argparse
import sys

from causal_lib.book import run_folder
from causal_lib.config import ConfigError, parse_overrides
from causal_lib.data.build import ensure_dataset
from causal_lib.data.records import DataError
from causal_lib.defenses import registry
from causal_lib.models.checkpoints import CheckpointError
from causal_lib.models.load import ModelLoadError
from causal_lib.training.pretrain import train_base
from causal_lib.training.trainer import TrainingError


def choices() -> list[str]:
    """"base" (the undefended base of chapter 04) and every trained defense of the registry (chapter 05)."""
    return ["base"] + registry.trained_names()


def train(params: str, defense: str, overrides: dict | None = None, resume: bool = False):


    if defense not in choices():
        raise ConfigError(f"--defense {defense!r}: choose from {', '.join(choices())}")
    cfg, paths = run_folder.start(params, overrides)
    ensure_dataset(cfg, paths)  # the dataset of chapter 02: built once per run folder, then reused
    if defense == "base":
        return train_base(cfg, paths, resume=resume)
    return registry.get(defense).train(cfg, paths, resume=resume)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m causal_lib.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True)
    p.add_argument("--defense", required=True, choices=choices())
    p.add_argument("--run", dest="run_name", help="run folder name under outputs/ (default: run.name)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the last complete trainer checkpoint")
    a = p.parse_args(argv)
    try:
        overrides = parse_overrides(a.set)
        if a.run_name:
            overrides["run.name"] = a.run_name
        result = train(a.params, a.defense, overrides, a.resume)
    except (ConfigError, DataError, ModelLoadError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"{a.defense}: {result.steps} steps in {result.train_seconds:.0f} s, best epoch {result.best_epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
