"""The guard of a run folder: the run lock (outputs/<run>/book.lock, one writer at a time), no symbolic link in or
as the folder, and run.json's params hash (a folder of other params is refused; --force resets it)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from causal_lib.book.common import BookError, relative_to_project
from causal_lib.config import Config, portable_config, portable_path
from causal_lib.core.hashing import file_sha256
from causal_lib.core.run_folder import RunPaths, other_params, read_state, refuse_links, write_json
from causal_lib.data.build import resolve_attack_file


# The tokens of the run locks held by this process or by the process that started it: a process the holder starts
# (chapter 05's training ranks, launched from the book's kernel) joins the held lock instead of being refused by it.
HELD_LOCKS_ENV = "CAUSAL_PI_HELD_LOCKS"


class RunLock:
    """outputs/<run>/book.lock: one book run at a time per run folder. Holds {"pid", "host", "created", "token"}; a
    lock whose process is gone (or is another process under a reused pid) is taken over, with a line saying so. A
    process started by the holder while it runs (its token in HELD_LOCKS_ENV, inherited) joins the lock: it neither
    waits nor removes it."""

    NAME = "book.lock"

    def __init__(self, root: Path):
        self.path = Path(root) / self.NAME
        self.joined = False
        self._token: str | None = None

    @staticmethod
    def _alive(info: dict) -> bool:
        import psutil

        if info.get("host") not in (None, socket.gethostname()):
            return True  # another machine's run on a shared disk: cannot tell, assume it is running
        try:
            proc = psutil.Process(int(info["pid"]))
            return proc.create_time() <= float(info.get("created", 0)) + 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, ValueError, TypeError):
            return False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    info = {}
                info = info if isinstance(info, dict) else {}
                alive = self._alive(info)
                if alive and info.get("token") in os.environ.get(HELD_LOCKS_ENV, "").split():
                    self.joined = True  # started by the lock's holder, which still runs: its run, joined
                    return self
                if alive:
                    raise BookError(f"{relative_to_project(self.path.parent)} is in use by another book run "
                                    f"(pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}); "
                                    f"wait for it to end, or use another run name (--run NAME)") from None
                print(f"taking over the stale lock {relative_to_project(self.path)} of pid {info.get('pid', '?')} "
                      f"(no longer running)", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            self._token = uuid.uuid4().hex
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time(),
                           "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": self._token}, f)
            os.environ[HELD_LOCKS_ENV] = " ".join(os.environ.get(HELD_LOCKS_ENV, "").split() + [self._token])
            return self
        raise BookError(f"could not take the lock {self.path}: another book run keeps taking it")

    def __exit__(self, *exc):
        if self.joined:
            return
        held = [t for t in os.environ.get(HELD_LOCKS_ENV, "").split() if t != self._token]
        if held:
            os.environ[HELD_LOCKS_ENV] = " ".join(held)
        else:
            os.environ.pop(HELD_LOCKS_ENV, None)
        with contextlib.suppress(FileNotFoundError):
            info = json.loads(self.path.read_text() or "{}")
            if info.get("pid") == os.getpid():
                self.path.unlink()


def _check_run(cfg: Config, params_file: Path, force: bool = False) -> tuple[RunPaths, dict]:
    """The run folder and run.json's state; a folder of other params refused (unless `force`)."""
    paths = RunPaths(cfg.run_dir).make()
    state = read_state(paths.root)
    h = cfg.params_hash()
    if other_params(state, h) and not force:
        raise BookError(f"{relative_to_project(paths.root)} holds a run made with other params (hash "
                        f"{state['params_hash']} from {state.get('params_file')}; now {h} from "
                        f"{relative_to_project(params_file)}). Use another run name "
                        f"(--run NAME or run.name in the params) or delete that folder; --force resets it.")
    return paths, state


def _open_run(cfg: Config, params_file: Path, force: bool) -> tuple[RunPaths, dict]:
    paths, state = _check_run(cfg, params_file, force)
    state_path = paths.root / "run.json"
    h = cfg.params_hash()
    if state.get("params_hash") != h:
        state = {"params_hash": h, "chapters": {}}
    # the user's files as portable paths (config.portable_path) with their sha256: no absolute path in outputs
    state.update(params_file=portable_path(params_file), seed=cfg.run.seed, config=portable_config(cfg),
                 input_files=input_files(cfg))
    write_json(state_path, state)
    return paths, state


def input_files(cfg: Config) -> list[dict]:
    """The user's data files (data.documents_file, data.attack_files) as run.json records them: the key, the
    portable path (relative to the project, or the file name alone) and the sha256 of the content."""
    keyed = ([("data.documents_file", cfg.data.documents_file)] if cfg.data.documents_file else []) + \
        [(f"data.attack_files[{i}]", f) for i, f in enumerate(cfg.data.attack_files)]
    return [{"key": key, "path": portable_path(f), "sha256": file_sha256(resolve_attack_file(f, key))}
            for key, f in keyed]


@contextlib.contextmanager
def open_run_folder(cfg: Config, params_file: Path, force: bool = False):
    """The one guard of every command that writes into a run folder (the book runner, `python -m
    causal_lib.training`): no symbolic link as or inside the run folder (run_folder.refuse_links), the run lock
    (RunLock: one writer at a time), and run.json's params hash (a folder of other params is refused, --force
    resets it). Yields (RunPaths, run.json's state); the lock is released at the end. A process that joins the
    lock of the run that started it (chapter 05's training ranks) checks run.json's params hash and writes nothing:
    the holder keeps the record (a seed replica's folder has none)."""
    refuse_links(cfg.run_dir, levels=len(cfg.run.name.split("/")))
    with RunLock(cfg.run_dir) as lock:
        yield _check_run(cfg, params_file) if lock.joined else _open_run(cfg, params_file, force)
