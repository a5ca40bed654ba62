"""Train one model outside the notebooks, e.g. on several GPUs with accelerate:

    accelerate launch --num_processes 4 -m causal_lib.training --params params/gpu_qlora_7b.yaml --defense causal
    python -m causal_lib.training --params params/default.yaml --defense base

It runs exactly what chapters 04/05 run (same functions, same checkpoints under outputs/<run>/checkpoints/).
Afterwards `python -m causal_lib.book run --params ... --resume` executes the chapters, whose training
calls then resume from the finished trainer checkpoint instead of training again.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from causal_lib.book import run_folder, runner
from causal_lib.book.run_folder import RunFolderError
from causal_lib.book.runner import BookError
from causal_lib.config import ConfigError, load_config, parse_overrides, resolve_params_path
from causal_lib.data.build import ensure_dataset
from causal_lib.data.records import DataError
from causal_lib.defenses import registry

# the training stack (torch, transformers) is imported only to train: a refused command answers in about a second
_STACK_ERRORS = (("causal_lib.models.checkpoints", "CheckpointError"), ("causal_lib.models.load", "ModelLoadError"),
                 ("causal_lib.training.trainer", "TrainingError"), ("causal_lib.training.shipped_base", "ShippedBaseError"))


def _user_errors() -> tuple:
    """The errors that are one line naming the input and the fix (no traceback): the training stack's own ones
    count once their module is loaded (they cannot be raised before)."""
    stack = tuple(getattr(sys.modules[mod], name) for mod, name in _STACK_ERRORS if mod in sys.modules)
    return (ConfigError, DataError, BookError, RunFolderError) + stack


def choices() -> list[str]:
    """"base" (the undefended base of chapter 04) and every trained defense of the registry (chapter 05)."""
    return ["base"] + registry.trained_names()


def train(params: str, defense: str, overrides: dict | None = None, resume: bool = False):
    """Train `defense` into the run folder of `params` under the book runner's own guard (runner.open_run_folder:
    the run lock, the params hash of run.json, no symbolic links): a folder made with other params is refused
    instead of having its data rebuilt in place. Under accelerate only the main process (RANK 0) takes the lock
    and records the params; the others check the folder (run_folder.start) and write where it does."""
    if defense not in choices():
        raise ConfigError(f"--defense {defense!r}: choose from {', '.join(choices())}")
    params_file = resolve_params_path(params)
    cfg = load_config(params_file, overrides)
    runner.check_run_name(cfg.run.name)
    runner.check_inputs(cfg)
    main_process = os.environ.get("RANK", "0") in ("", "0")
    with runner.open_run_folder(cfg, params_file) if main_process else contextlib.nullcontext():
        cfg, paths = run_folder.start(params_file, overrides)
        ensure_dataset(cfg, paths)  # the dataset of chapter 02: built once per run folder, then reused
        if defense == "base":
            from causal_lib.training.pretrain import train_base

            return train_base(cfg, paths, resume=resume)
        return registry.get(defense).train(cfg, paths, resume=resume)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m causal_lib.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True)
    p.add_argument("--defense", required=True, choices=choices())
    p.add_argument("--run", dest="run_name", help="run folder name under outputs/ (default: run.name)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override params, e.g. train.epochs=1 (repeatable: every --set counts)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete trainer checkpoint")
    a = p.parse_args(argv)
    try:
        overrides = parse_overrides(a.set)
        if a.run_name:
            overrides["run.name"] = a.run_name
        result = train(a.params, a.defense, overrides, a.resume)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(f"{a.defense}: {result.steps} steps in {result.train_seconds:.0f} s, best epoch {result.best_epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
