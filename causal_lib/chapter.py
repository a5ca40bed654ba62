"""What every chapter does first: read the params, lay out the run folder, fix seeds and threads."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .config import Config, load_config

# Spinning OpenMP threads make torch steps ~20x slower when anything else is busy (DESIGN.md s.9).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class RunPaths:
    root: Path

    @property
    def notebooks(self) -> Path: return self.root / "notebooks"
    @property
    def html(self) -> Path: return self.root / "html"
    @property
    def reports(self) -> Path: return self.root / "reports"
    @property
    def metrics(self) -> Path: return self.root / "metrics"
    @property
    def checkpoints(self) -> Path: return self.root / "checkpoints"
    @property
    def data(self) -> Path: return self.root / "data"
    @property
    def logs(self) -> Path: return self.root / "logs"

    def make(self) -> "RunPaths":
        for p in (self.notebooks, self.html, self.reports, self.metrics, self.checkpoints, self.data, self.logs):
            p.mkdir(parents=True, exist_ok=True)
        return self


def set_seed(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass


def start(params_file: str, overrides: dict | None = None) -> tuple[Config, RunPaths]:
    """Load and validate params, create outputs/<run>/..., seed everything. Call once per chapter."""
    cfg = load_config(params_file, overrides)
    paths = RunPaths(cfg.run_dir).make()
    set_seed(cfg.run.seed)
    try:
        import torch
        torch.set_num_threads(cfg.run.torch_threads)
    except ImportError:
        pass
    return cfg, paths


def write_json(path: Path, obj) -> Path:
    """Write JSON atomically (temporary file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def write_metrics(paths: RunPaths, name: str, obj: dict) -> Path:
    """Every number a report shows is also written here, as metrics/<name>.json."""
    return write_json(paths.metrics / f"{name}.json", obj)


def read_metrics(paths: RunPaths, name: str) -> dict:
    p = paths.metrics / f"{name}.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run the chapter that writes metrics '{name}' first "
                                f"(python -m causal_lib.book run --params ... --from NN)")
    return json.loads(p.read_text())
