"""Train one model outside the notebooks, e.g. on several GPUs with accelerate:

    accelerate launch --num_processes 4 -m causal_lib.training --params params/gpu_qlora_7b.yaml --defense causal
    python -m causal_lib.training --params params/smoke.yaml --defense causal --num-processes 2   # local DDP
    python -m causal_lib.training --params params/default.yaml --defense base

Under a launcher (accelerate launch, torchrun, or --num-processes N, which starts N local processes itself and
reports a failed one in one line) every rank trains with DDP on its share of each global batch (train.batch_size);
rank 0 alone takes the run lock and writes (causal_lib.core.distributed).

It runs exactly what chapters 04/05 run (same functions, same checkpoints under outputs/<run>/checkpoints/).
Afterwards `python -m causal_lib.book run --params ... --resume` executes the chapters, whose training
calls then resume from the finished trainer checkpoint instead of training again.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

from causal_lib.book import runner

from causal_lib.core import run_folder
from causal_lib.core.run_folder import RunFolderError
from causal_lib.book.common import BookError
from causal_lib.book.lock import open_run_folder
from causal_lib.config import ConfigError, load_config, parse_overrides, resolve_params_path
from causal_lib.data.build import ensure_dataset
from causal_lib.data.records import DataError
from causal_lib.defenses import registry
from causal_lib.core import distributed

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
    """Train `defense` into the run folder of `params` under the book runner's own guard (book.lock.open_run_folder:
    the run lock, the params hash of run.json, no symbolic links): a folder made with other params is refused
    instead of having its data rebuilt in place. Under accelerate only the main process (RANK 0) takes the lock
    and records the params; the others check the folder (run_folder.start) and write where it does."""
    if defense not in choices():
        raise ConfigError(f"--defense {defense!r}: choose from {', '.join(choices())}")
    params_file = resolve_params_path(params)
    cfg = load_config(params_file, overrides)
    registry.check_params(cfg)
    runner.check_run_name(cfg.run.name)
    runner.check_inputs(cfg)
    distributed.init()  # under a launcher: join its process group (gloo on the CPU); nothing in one process
    if distributed.world_size() > 1:
        distributed.per_process_batch(cfg.train.batch_size)  # the global batch divides by the processes, or one line
    with contextlib.ExitStack() as stack:

        def prepare():  # rank 0 (or the one process): lock, params hash, dataset, tokenizer; the others wait for it
            stack.enter_context(open_run_folder(cfg, params_file))
            cfg_, paths_ = run_folder.start(params_file, overrides)
            ensure_dataset(cfg_, paths_)  # the dataset of chapter 02: built once per run folder, then reused
            if defense == "base" and cfg_.model.kind != "hf":
                from causal_lib.training.pretrain import ensure_tokenizer

                ensure_tokenizer(cfg_, paths_)  # written once, before any rank reads it
            return cfg_, paths_

        prepared = distributed.main_first(prepare)
        if prepared is None:  # another rank: rank 0 prepared the folder; check it (params hash, links), read its data
            cfg, paths = run_folder.start(params_file, overrides)
            ensure_dataset(cfg, paths)
        else:
            cfg, paths = prepared
        if defense == "base":
            from causal_lib.training.pretrain import train_base

            if not distributed.is_main_process() and not _base_trains(cfg):
                return None  # the shipped base is installed by rank 0 alone: nothing to train
            return train_base(cfg, paths, resume=resume)
        return registry.get(defense).train(cfg, paths, resume=resume)  # over train.learning_rate_grid when set


def _base_trains(cfg) -> bool:
    """Whether chapter 04's base is trained (else installed from the shipped files, or used as it is)."""
    if cfg.model.kind == "hf":
        from causal_lib.training import shipped_adapter

        return not shipped_adapter.uses_shipped_adapter(cfg) and cfg.train.base_epochs > 0
    return cfg.base.source != "shipped"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m causal_lib.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True)
    p.add_argument("--defense", required=True, choices=choices())
    p.add_argument("--run", dest="run_name", help="run folder name under outputs/ (default: run.name)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override params, e.g. train.epochs=1 (repeatable: every --set counts)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete trainer checkpoint")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="train on N local processes with DDP (gloo on the CPU, NCCL on GPUs); train.batch_size stays "
                        "the global batch. Under accelerate launch / torchrun leave it out")
    a = p.parse_args(argv)
    if a.num_processes is not None:
        return _launch(a, argv if argv is not None else sys.argv[1:])
    distributed.watch_launcher()  # a rank started by --num-processes or a chapter ends with its launcher
    try:
        overrides = parse_overrides(a.set)
        if a.run_name:
            overrides["run.name"] = a.run_name
        result = train(a.params, a.defense, overrides, a.resume)
    except distributed.RankStopped:  # rank 0 refused the run and says why in its own line
        distributed.write_status(2, None)
        return 2
    except Exception as e:
        if distributed.active() and distributed.is_collective_failure(e):
            line = (f"error: training {a.defense} stopped: another of the {distributed.world_size()} processes ended "
                    f"({type(e).__name__}); the last complete checkpoint is kept: run the same command with --resume")
            if distributed.is_main_process():
                print(line, file=sys.stderr)
            distributed.write_status(3, line)
            return 3
        if not isinstance(e, _user_errors()):
            raise
        line = f"error: {e}"
        print(line, file=sys.stderr)
        distributed.write_status(2, line)
        return 2
    line = None
    if result is not None and distributed.is_main_process():
        line = f"{a.defense}: {result.steps} steps in {result.train_seconds:.0f} s, best epoch {result.best_epoch}"
        print(line)
    distributed.write_status(0, line, dataclasses.asdict(result) if result is not None else None)
    return 0


def _launch(a, argv: list[str]) -> int:
    """--num-processes N: this command again on N local processes (distributed.launch), one line at the end."""
    if a.num_processes < 1 or a.num_processes > 1024:
        print(f"error: --num-processes {a.num_processes}: choose 1 to 1024 local processes", file=sys.stderr)
        return 2
    child = _without_num_processes(argv)
    if a.num_processes == 1:
        return main(child)
    try:  # bad params are refused here in one line, before any process starts
        overrides = parse_overrides(a.set)
        if a.run_name:
            overrides["run.name"] = a.run_name
        cfg = load_config(resolve_params_path(a.params), overrides)
        registry.check_params(cfg)
        runner.check_run_name(cfg.run.name)
        if cfg.train.batch_size % a.num_processes:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must divide by the "
                              f"{a.num_processes} processes; set it to a multiple of {a.num_processes}")
    except (ConfigError, BookError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    resume = "python -m causal_lib.training " + " ".join(child + ([] if a.resume else ["--resume"])) + \
        f" --num-processes {a.num_processes}"
    rc, line, _ = distributed.launch("causal_lib.training", child, a.num_processes, f"training {a.defense}", resume)
    if line:
        print(line, file=sys.stderr if rc else sys.stdout)
    return rc


def _without_num_processes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--num-processes":
            skip = True
        elif not x.startswith("--num-processes="):
            out.append(x)
    return out


if __name__ == "__main__":
    sys.exit(main())
