"""The training contract's learning-rate search (issue 30): every trained defense gets the same grid.

With `train.learning_rate_grid` set, a defense trains once per rate (checkpoints/<name>@lr<k>/, each run with its
own epochs and best epoch by training.selection), and the rate whose selected epoch has the lowest validation
loss on O* becomes the defense's model: its folder is copied to checkpoints/<name>/ (through a temporary folder
and a rename) with `lr_search.json` beside best_model (the grid, each rate's score, the choice), which the
comparison's training table reads. The test split is never read. Without a grid the defense trains once.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import shutil

from causal_lib.config import Config
from causal_lib.training.selection import SELECT_BY, SELECTION_RULE

SEARCH_FILE = "lr_search.json"


def grid_name(name: str, k: int) -> str:
    return f"{name}@lr{k}"


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
    the TrainResult of the chosen rate, under that name."""
    grid = list(cfg.train.learning_rate_grid)
    if not grid:  # a defense module's train() need not take a name (registry.py: train(cfg, paths, resume))
        return train_fn(cfg, paths, resume=resume, **options)
    if "name" not in inspect.signature(train_fn).parameters:
        raise ValueError(f"defense {defense!r}: its train() takes no name=, so train.learning_rate_grid cannot train "
                         f"one model per rate; add a name parameter (checkpoints/<name>/) or leave the grid empty")
    name = options.pop("name", defense)
    runs = []
    for k, lr in enumerate(grid):
        r = train_fn(with_learning_rate(cfg, lr), paths, resume=resume, name=grid_name(name, k), **options)
        runs.append((lr, k, r, selected_score(r)))
    lr, k, best, score = min(runs, key=lambda x: x[3])
    search = {"learning_rate_grid": grid, "learning_rate": lr, "selection_rule": SELECTION_RULE,
              "scores": {str(rate): s for rate, _, _, s in runs}, "chosen_folder": grid_name(name, k)}
    dest, tmp = paths.checkpoints / name, paths.checkpoints / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(paths.checkpoints / grid_name(name, k), tmp, ignore=shutil.ignore_patterns("trainer"))
    (tmp / SEARCH_FILE).write_text(json.dumps(search, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    (paths.metrics / f"lr_search_{name}.json").write_text(json.dumps(search, indent=1))
    return dataclasses.replace(best, name=name)
