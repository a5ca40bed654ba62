"""What every chapter does first: read the params, lay out the run folder, fix seeds and threads."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from causal_lib.config import PROJECT_ROOT, Config, load_config

# Spinning OpenMP threads make torch steps ~20x slower when anything else is busy (DESIGN.md s.9).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SEEDS_DIR = "seeds"  # outputs/<run>/seeds/seed_<s>/: the seed replicas of a run


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

    def replica(self, seed: int) -> "RunPaths":
        """The run folder of a seed replica (run.seeds) inside this run."""
        return RunPaths(self.root / SEEDS_DIR / f"seed_{seed}")

    def make(self) -> "RunPaths":
        for p in (self.notebooks, self.html, self.reports, self.metrics, self.checkpoints, self.data, self.logs):
            p.mkdir(parents=True, exist_ok=True)
        return self


class RunFolderError(RuntimeError):
    """A run folder that cannot be written safely (a symbolic link in it, a run.json of other params); the message
    names the path and the fix."""


def _display(p: Path) -> str:
    try:
        return Path(p).relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(p)


def refuse_links(root: Path, levels: int = 1) -> None:
    """A run folder is written only where it is: neither `root` nor its `levels - 1` parents (a seed replica's
    "<run>/seeds/seed_<s>") may be a symbolic link, nor anything inside it (a link would send the book's writes
    to wherever it points, outside outputs/<run>/). Links are refused, never followed and never removed: the
    project did not make them. Walks the folder without following links (os.walk); RunFolderError names the first."""
    root = Path(root)
    for p in [root, *list(root.parents)[:max(levels, 1) - 1]]:
        if p.is_symlink():
            _refuse_link(p, "the run folder" if p == root else "a folder above the run folder")
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                _refuse_link(Path(dirpath) / name, "inside the run folder")


def _refuse_link(p: Path, where: str) -> None:
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    raise RunFolderError(f"{_display(p)} is a symbolic link ({where}, to {target}); the book never writes through a "
                         f"link: remove the link (rm {_display(p)}) or use another run name (--run NAME)")


STATE_FILE = "run.json"  # the run's record: params hash, params file, config, chapter records (book.runner)


def read_state(root: Path) -> dict:
    """outputs/<run>/run.json, or {} when there is none; one that is not a JSON object is a RunFolderError."""
    path = Path(root) / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{_display(path)} cannot be read ({type(e).__name__}); move that run folder away or use "
                             f"another run name (--run NAME)") from None
    if not isinstance(state, dict):
        raise RunFolderError(f"{_display(path)} is not a run record (a JSON object); move that run folder away or use "
                             f"another run name (--run NAME)")
    return state


def other_params(state: dict, params_hash: str) -> bool:
    """The run folder's record (read_state) was made with params other than `params_hash`'s."""
    return state.get("params_hash") not in (None, params_hash)


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
    # what a chapter (or a command run outside the book) checks before writing: no symbolic link in or as its
    # run folder, and a run.json there made with these params (the book runner writes it before any chapter)
    refuse_links(cfg.run_dir, levels=len(cfg.run.name.split("/")))
    state = read_state(cfg.run_dir)
    if other_params(state, cfg.params_hash()):
        raise RunFolderError(f"{_display(cfg.run_dir)} holds a run made with other params (hash {state['params_hash']} "
                             f"from {state.get('params_file')}; these have {cfg.params_hash()}): use another run name "
                             f"(--run NAME or run.name) or reset the folder with the book's --force")
    paths = RunPaths(cfg.run_dir).make()
    set_seed(cfg.run.seed)
    try:
        import torch
        from causal_lib.core.distributed import threads_per_process

        torch.set_num_threads(threads_per_process(cfg.run.torch_threads))  # shared by a launcher's local ranks
    except ImportError:
        pass
    return cfg, paths


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text atomically (temporary file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # O_NOFOLLOW: never write through a link planted at the temporary name (it is refused, and left alone);
    # os.replace then replaces a link at `path` itself instead of writing to where it points
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:  # a failed write (or rename) leaves no temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_folder(tmp: Path, dest: Path) -> Path:
    """Rename the finished folder `tmp` over `dest`: the old `dest` is moved to `<dest>.old-<pid>` for the instant
    between two renames (a folder cannot be renamed over a non-empty one), then deleted. A crash never leaves a
    half-written `dest`."""
    old = dest.parent / f"{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def copy_folder_atomic(src: Path, dest: Path, ignore=None) -> Path:
    """Copy the folder `src` to `dest` through `<dest>.tmp-<pid>` and replace_folder (`ignore` as shutil.copytree's)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{dest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=ignore)
    return replace_folder(tmp, dest)


def write_json(path: Path, obj) -> Path:
    """Write JSON atomically (write_text_atomic)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_metrics(paths: RunPaths, name: str, obj: dict) -> Path:
    """Every number a report shows is also written here, as metrics/<name>.json."""
    return write_json(paths.metrics / f"{name}.json", obj)


# Metrics that measure the machine rather than the science (time, speed, memory, clock): they differ between
# two runs of the same params and seed; everything else in metrics/ must not.
MACHINE_KEYS = re.compile(r"seconds|runtime|speedup|per_second|_s$|_gb$|_at$|^at$|(^|_)time|^(rss|peak|wall)")


def without_machine_measurements(obj):
    """`obj` (parsed metrics JSON) without the MACHINE_KEYS fields: what two identical runs must share."""
    if isinstance(obj, dict):
        return {k: without_machine_measurements(v) for k, v in obj.items() if not MACHINE_KEYS.search(str(k))}
    if isinstance(obj, list):  # rows flagged "machine" (free RAM, book wall time) go as a whole
        return [without_machine_measurements(v) for v in obj if not (isinstance(v, dict) and v.get("machine") is True)]
    return obj


def read_metrics(paths: RunPaths, name: str) -> dict:
    p = paths.metrics / f"{name}.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run the chapter that writes metrics '{name}' first "
                                f"(python -m causal_lib.book run --params ... --from NN)")
    return json.loads(p.read_text())


