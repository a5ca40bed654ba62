"""Train one model outside the notebooks, e.g. on several GPUs with accelerate:

    accelerate launch --num_processes 4 -m causal_lib.train --params params/gpu_qlora_7b.yaml --defense causal
    python -m causal_lib.train --params params/default.yaml --defense base

It runs exactly what chapters 04/05 run (same functions, same checkpoints under outputs/<run>/checkpoints/).
Afterwards `python -m causal_lib.book run --params ... --resume` executes the chapters, whose training
calls then resume from the finished trainer checkpoint instead of training again.
"""
from __future__ import annotations

import argparse
import sys

from .book import _parse_set
from .config import ConfigError
from .data import DataError
from .model import CheckpointError, ModelLoadError
from .training import TrainingError

DEFENSES = ("base", "causal", "struq", "secalign")


def train(params: str, defense: str, overrides: dict | None = None, resume: bool = False):
    from . import chapter

    from .data import ensure_dataset

    cfg, paths = chapter.start(params, overrides)
    ensure_dataset(cfg, paths)  # the dataset of chapter 02: built once per run folder, then reused
    if defense == "base":
        from .base_model import train_base
        return train_base(cfg, paths, resume=resume)
    if defense == "causal":
        from .training import train_causal
        return train_causal(cfg, paths, resume=resume)
    if defense == "struq":
        from .baselines import train_struq
        return train_struq(cfg, paths, resume=resume)
    if defense == "secalign":
        from .baselines import train_secalign
        return train_secalign(cfg, paths, resume=resume)
    raise ConfigError(f"--defense {defense!r}: choose from {', '.join(DEFENSES)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m causal_lib.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True)
    p.add_argument("--defense", required=True, choices=DEFENSES)
    p.add_argument("--run", dest="run_name", help="run folder name under outputs/ (default: run.name)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the last complete trainer checkpoint")
    a = p.parse_args(argv)
    try:
        overrides = _parse_set(a.set)
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
