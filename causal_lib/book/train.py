"""Chapter 05's training of one defense: in the chapter's own process, or, with run.num_processes N > 1, on N local
processes with DDP (`python -m causal_lib.training` started by core.distributed.launch: gloo on the CPU, NCCL on
GPUs; train.batch_size stays the global batch).

The N processes belong to the chapter's book run: they inherit its run lock (book.lock.HELD_LOCKS_ENV) and are held
to the same params hash, rank 0 alone writes, and the chapter reads back rank 0's training result. A process that
fails ends the chapter with the launcher's one line (which rank, how, the command that resumes).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from causal_lib.book.common import BookError
from causal_lib.book.lock import RunLock
from causal_lib.config import Config, resolve_params_path
from causal_lib.core import distributed, run_folder
from causal_lib.core.run_folder import RunPaths
from causal_lib.defenses import registry


def train_defense(params_file: str | Path, overrides: dict | None, defense: str,
                  resume: bool = False) -> tuple[Config, RunPaths, object]:
    """Train `defense` into the run folder of (params_file, overrides) over train.learning_rate_grid when set, as
    `registry.get(defense).train` does -> (cfg, paths, its TrainResult)."""
    overrides = dict(overrides or {})
    cfg, paths = run_folder.start(params_file, overrides)
    n = cfg.run.num_processes
    if n == 1:
        return cfg, paths, registry.get(defense).train(cfg, paths, resume=resume)
    argv = training_command(params_file, overrides, cfg, defense)
    again = shlex.join(["python", "-m", "causal_lib.training", *argv, "--resume", "--num-processes", str(n)])
    # The chapter holds its run folder's lock while the processes train, and they join it: the book's lock when the
    # runner holds it, else the chapter's own (a seed replica's folder, a chapter run alone); joined, they write no
    # run.json of their own.
    with RunLock(cfg.run_dir):
        rc, line, result = distributed.launch("causal_lib.training", argv + (["--resume"] if resume else []), n,
                                              f"training {defense}", again)
    if rc or result is None:
        raise BookError(line or f"training {defense} on {n} processes returned no result (exit code {rc})")
    print(line, flush=True)
    from causal_lib.training.trainer import TrainResult

    return cfg, paths, TrainResult(**{**result, "epochs": {int(k): v for k, v in result["epochs"].items()}})


def is_seed_replica(cfg: Config) -> bool:
    """A seed replica's run folder, "<run>/seeds/seed_<s>": a name only the book runner gives (check_run_name)."""
    return "/" in cfg.run.name


def training_command(params_file: str | Path, overrides: dict, cfg: Config, defense: str) -> list[str]:
    """The training command line's arguments for this chapter's run folder. A seed replica's run name
    ("<run>/seeds/seed_<s>", which the command line refuses as a user's name) is given as its folder's parent
    (run.output_root) and name: the same folder and, both being outside the params hash, the same hash."""
    overrides = dict(overrides)
    if is_seed_replica(cfg):
        overrides["run.output_root"] = str(cfg.run_dir.parent)
        overrides["run.name"] = cfg.run_dir.name
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return ["--params", str(resolve_params_path(params_file)), "--defense", defense] + (["--set", *sets] if sets else [])
