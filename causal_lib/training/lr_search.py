"""The training contract's learning-rate search (issue 30): every trained defense gets the same grid.

With `train.learning_rate_grid` set, a defense trains once per rate (checkpoints/<name>@lr<k>/, each run with its
own epochs and best epoch by training.selection), and the rate whose selected epoch has the lowest validation
loss on O* becomes the defense's model: its folder is copied to checkpoints/<name>/ (through a temporary folder
and a rename) with `lr_search.json` beside best_model (the grid, each rate's score, the choice), which the
comparison's training table reads. The test split is never read. Without a grid the defense trains once.

`train.kl_weight_grid` (issue 32) adds the weight of the causal method's output-level KL term to the search, for a
defense whose train() takes `kl_weight` and whose registry entry does not fix it (the control and the ablations
without the term fix it to 0): one run per (rate, weight), checkpoints/<name>@lr<k>kl<j>/ (@kl<j> without a rate
grid), chosen by the same rule. Such a defense then tries more configurations than one without the term; the
search records how many, and the comparison's training table shows it as a difference of the contract.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import shutil

from causal_lib.config import Config
from causal_lib.core import distributed
from causal_lib.training.trainer import TrainingError
from causal_lib.training.selection import SELECT_BY, SELECTION_RULE

SEARCH_FILE = "lr_search.json"


def grid_name(name: str, k: int | None, j: int | None = None) -> str:
    """The folder of one configuration: <name>@lr<k> (the rate grid's k-th rate), with kl<j> for the KL grid's j-th
    weight (<name>@kl<j> without a rate grid)."""
    return f"{name}@" + (f"lr{k}" if k is not None else "") + (f"kl{j}" if j is not None else "")


def kl_grid(cfg: Config, train_fn, options: dict) -> list[float]:
    """train.kl_weight_grid where it applies: train_fn takes kl_weight and `options` (the registry entry's) do not
    fix it; else [] (the defense has no KL term to choose, or its entry switches it off)."""
    takes = "kl_weight" in inspect.signature(train_fn).parameters
    return list(cfg.train.kl_weight_grid) if takes and "kl_weight" not in options else []


def with_learning_rate(cfg: Config, lr: float) -> Config:
    """The config with every learning rate a defense reads set to `lr` (SFT and SecAlign's DPO)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=lr, dpo_learning_rate=lr))


def selected_score(result) -> float:
    scores = result.epochs.get(result.best_epoch, {}) if result.best_epoch is not None else {}
    if SELECT_BY not in scores:
        raise ValueError(f"learning-rate search: {result.name} recorded no {SELECT_BY} at its selected epoch (no "
                         f"validation split?); the search needs the data's val split (chapter 02)")
    return float(scores[SELECT_BY])


def train_over_grid(train_fn, cfg: Config, paths, defense: str, resume: bool = False, **options):
    """train_fn(cfg, paths, resume=..., **options) once per rate of train.learning_rate_grid, each under its own
    name (checkpoints/<name>@lr<k>/; name = options' name or `defense`), or once as given without a grid ->
    the TrainResult of the chosen rate, under that name. A rate whose training stops (NaN, out of memory) is recorded
    as failed and the others go on; on several processes rank 0 alone chooses and copies, the others take its choice."""
    grid, kls = list(cfg.train.learning_rate_grid), kl_grid(cfg, train_fn, options)
    if not grid and not kls:  # a defense module's train() need not take a name (registry.py: train(cfg, paths, resume))
        return train_fn(cfg, paths, resume=resume, **options)
    if "name" not in inspect.signature(train_fn).parameters:
        raise ValueError(f"defense {defense!r}: its train() takes no name=, so train.learning_rate_grid / "
                         f"train.kl_weight_grid cannot train one model per configuration; add a name parameter "
                         f"(checkpoints/<name>/) or leave the grids empty")
    name = options.pop("name", defense)
    # one configuration per (rate, weight); k / j index the grids (None: that grid is not searched)
    configs = [(k, lr, j, w) for k, lr in (enumerate(grid) if grid else [(None, cfg.train.learning_rate)])
               for j, w in (enumerate(kls) if kls else [(None, None)])]
    runs, failed = [], {}
    for k, lr, j, w in configs:
        kw = {**options, **({"kl_weight": w} if j is not None else {})}
        try:
            r = train_fn(with_learning_rate(cfg, lr), paths, resume=resume, name=grid_name(name, k, j), **kw)
        except TrainingError as e:
            failed[_key(lr, w, kls)] = str(e)
            continue
        runs.append((k, lr, j, w, r))
    if not runs:
        raise TrainingError(f"{name}: every configuration of train.learning_rate_grid {grid} / train.kl_weight_grid "
                            f"{kls} failed: " + "; ".join(f"{c}: {e}" for c, e in failed.items()))
    chosen = None
    if distributed.is_main_process():
        scored = [(k, lr, j, w, selected_score(r)) for k, lr, j, w, r in runs]
        k, lr, j, w, score = min(scored, key=lambda x: x[4])
        search = {"learning_rate_grid": grid, "learning_rate": lr, "selection_rule": SELECTION_RULE,
                  "scores": {_key(rate, wt, kls): sc for _, rate, _, wt, sc in scored}, "failed": failed,
                  "configurations": len(configs), "chosen_folder": grid_name(name, k, j)}
        if kls:
            search |= {"kl_weight_grid": kls, "kl_weight": w}
        _install(paths, name, grid_name(name, k, j), search)
        chosen = (k, j)
    chosen = tuple(distributed.broadcast(chosen))
    distributed.barrier()
    best = next(r for k, _, j, _, r in runs if (k, j) == chosen)
    return dataclasses.replace(best, name=name, log_path=str(paths.metrics / f"train_{name}_log.jsonl"))


def _key(lr: float, w: float | None, kls: list) -> str:
    """A configuration's key in lr_search.json: the rate ("0.0005"), with the weight when the KL grid is searched."""
    return f"{lr}" if not kls else f"lr={lr}, kl={w}"


def _install(paths, name: str, folder: str, search: dict) -> None:
    """checkpoints/<folder> (without its trainer state) becomes checkpoints/<name> with lr_search.json, and its
    training log metrics/train_<name>_log.jsonl: each through a temporary copy and renames, so an interruption
    leaves either the old or the new folder, never half of one."""
    dest, tmp, old = (paths.checkpoints / name, paths.checkpoints / f".{name}.tmp",
                      paths.checkpoints / f".{name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(paths.checkpoints / folder, tmp, ignore=shutil.ignore_patterns("trainer"))
    (tmp / SEARCH_FILE).write_text(json.dumps(search, indent=1))
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    log = paths.metrics / f"train_{folder}_log.jsonl"
    if log.exists():
        part = paths.metrics / f".train_{name}_log.jsonl.tmp"
        shutil.copyfile(log, part)
        part.replace(paths.metrics / f"train_{name}_log.jsonl")
    part = paths.metrics / f".lr_search_{name}.json.tmp"
    part.write_text(json.dumps(search, indent=1))
    part.replace(paths.metrics / f"lr_search_{name}.json")
