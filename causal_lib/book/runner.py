"""The runner: executes the chapters in order with papermill, renders HTML, keeps a run folder honest.

    python -m causal_lib.book run --params params/default.yaml [--from 05] [--only 07] [--resume]
    python -m causal_lib.book check --params params/smoke.yaml      # validate params only
    python -m causal_lib.book list --params params/default.yaml     # the chapter runs, in order

The list of chapters is `CHAPTERS` below and nowhere else.

Run folders are outputs/<name>/ with a plain name (--run, run.name: letters, digits, -_. ; no '/', '..' or
absolute path). One book run at a time per run folder: outputs/<name>/book.lock holds the runner's pid (a lock
left by a dead process is taken over). --from/--only take a chapter number ("05"), a chapter name ("05_train")
or a chapter run's label ("05_train[causal]"). While a chapter runs, the lines its loops report
(causal_lib.core.progress) are printed, with a "still running" line when nothing new came for 20 s. Ctrl-C
stops the chapter and its kernel and prints the --resume command (exit status 130).

`--resume` skips a chapter run only when its record in run.json says it finished ok AND it was made from
the same notebook source (sha256 of notebooks/NN_*.py) and the same params (the run's params hash plus the
chapter run's own parameters, e.g. `defense`, and its seed); otherwise it runs again, and the runner prints
one line per chapter run saying which and why. A record written before these hashes were kept counts as
changed. A chapter that runs again invalidates nothing else: the chapters after it that read its outputs
are not rerun automatically (use --from NN for that). Only the notebook file is hashed, not the causal_lib
code it calls. Under --resume the training chapters (04, 05) still continue from their last complete
trainer checkpoint, also when they run again because their source changed; delete the checkpoints (or run
without --resume) to train from scratch.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from causal_lib.core import progress
from causal_lib.core.run_folder import (SEEDS_DIR, RunFolderError, RunPaths, file_sha256, notebook_stem,
                                       other_params, read_state, refuse_links, replica_label, write_json,
                                       write_text_atomic)
from causal_lib.config import (PROJECT_ROOT, RUN_NAME_RULE, Config, ConfigError, load_config, portable_config,
                               portable_path, resolve_params_path)
from causal_lib.data.build import check_data_files, data_seed, resolve_attack_file
from causal_lib.defenses import registry
from causal_lib.training.shipped_adapter import check_shipped_adapter, uses_shipped_adapter
from causal_lib.training.shipped_base import ShippedBaseError, check_shipped_base
from causal_lib.book.share import write_index
from causal_lib.config import parse_overrides


NOTEBOOKS = PROJECT_ROOT / "notebooks"


@dataclass(frozen=True)
class Chapter:
    stem: str  # notebooks/<stem>.py
    # Several papermill runs of one chapter (05_train once per defense): label suffix -> parameters.
    variants: Callable[[Config], list[tuple[str, dict]]] | None = None
    # Runs again for every seed replica (run.seeds), before the main seed's run of the same chapter, so
    # that the main run's 08 finds every replica's comparison.
    per_seed: bool = False

    @property
    def number(self) -> str:
        return self.stem[:2]


def _per_trained_defense(cfg: Config) -> list[tuple[str, dict]]:
    return [(d, {"defense": d}) for d in cfg.train.defenses if d in registry.trained_names()]


CHAPTERS: list[Chapter] = [
    Chapter("01_setup_check"),
    Chapter("02_dataset_validation"),
    Chapter("03_dry_run"),
    Chapter("04_base_model", per_seed=True),
    Chapter("05_train", variants=_per_trained_defense, per_seed=True),
    Chapter("06_epoch_validation", variants=_per_trained_defense, per_seed=True),
    Chapter("07_causal_verification"),
    Chapter("08_attack_evaluation", per_seed=True),
    Chapter("09_phase2_report"),
]


@dataclass
class ChapterRun:
    chapter: Chapter
    label: str  # "05_train[causal]", "05_train[causal]@seed1" for a seed replica
    parameters: dict = field(default_factory=dict)
    seed: int | None = None  # a seed replica's seed; None = the main run

    @property
    def source(self) -> Path:
        return NOTEBOOKS / f"{self.chapter.stem}.py"

    @property
    def out_stem(self) -> str:
        return notebook_stem(self.label)

    def overrides(self, cfg: Config, overrides: dict) -> dict:
        """The chapter's params overrides: a seed replica trains with its own seed on the main run's data,
        in outputs/<run>/seeds/seed_<s>/."""
        if self.seed is None:
            return overrides
        return {**overrides, "run.seed": self.seed, "run.seeds": [], "data.seed": data_seed(cfg),
                "run.name": f"{cfg.run.name}/{SEEDS_DIR}/seed_{self.seed}"}


def _sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def chapter_hashes(run: ChapterRun, cfg: Config) -> dict:
    """What a chapter run's record keeps to tell, on --resume, whether it would run the same way again:
    `source_hash` of its notebook source (the .py file's bytes) and `chapter_params_hash` of its params (the
    run's params hash, the chapter run's own papermill parameters such as `defense`, a seed replica's seed)."""
    params = {"params_hash": cfg.params_hash(), "parameters": run.parameters, "seed": run.seed}
    return {"source_hash": _sha16(run.source.read_bytes()),
            "chapter_params_hash": _sha16(json.dumps(params, sort_keys=True, default=str).encode())}


def resume_reason(record: dict | None, hashes: dict) -> str | None:
    """Why --resume must run a chapter run again given its last record, or None to skip it."""
    if record is None:
        return "not run in this folder yet, running"
    if record.get("status") != "ok":
        return f"last run {record.get('status') or 'did not finish'}, running again"
    if "source_hash" not in record or "chapter_params_hash" not in record:
        return "recorded without source/params hashes (an older run record), running again"
    changed = [what for what, key in (("source", "source_hash"), ("params", "chapter_params_hash"))
               if record[key] != hashes[key]]
    if changed:
        return f"{' and '.join(changed)} changed since it ran, running again"
    return None


def chapter_runs(cfg: Config) -> list[ChapterRun]:
    runs = []
    for ch in CHAPTERS:
        variants = [("", {})] if ch.variants is None else [(f"[{sfx}]", p) for sfx, p in ch.variants(cfg)]
        for suffix, params in variants:
            if ch.per_seed:
                runs += [ChapterRun(ch, replica_label(f"{ch.stem}{suffix}", s), params, s) for s in cfg.run.seeds]
            runs.append(ChapterRun(ch, f"{ch.stem}{suffix}", params))
    return runs


class BookError(RuntimeError):
    """A chapter failed or the run folder cannot be used; the message says which and what to do."""


class BookInterrupted(BookError):
    """Ctrl-C: the chapter and its kernel were stopped; the message names the chapter and the --resume command."""


def check_base(cfg) -> None:
    """The shipped base fits this world and model (base.source: shipped: the embedded base's shape and files, or the
    real model's tuned adapter against the installed GGUF): checked before any chapter runs, so a stale or tampered
    base is one line at the start, not a failure in chapter 04."""
    try:
        if cfg.model.kind == "tiny" and cfg.base.source == "shipped":
            check_shipped_base(cfg)
        elif uses_shipped_adapter(cfg):
            check_shipped_adapter(cfg)
    except ShippedBaseError as e:
        raise BookError(str(e)) from None


def check_run_name(name: str) -> None:
    """A user-given run name (--run, run.name, --set run.name) is one plain folder name under outputs/."""
    if "/" in str(name) or "\\" in str(name):
        raise ConfigError(f"run.name: {name!r} refused: {RUN_NAME_RULE}")


def relative_to_project(path: Path | str) -> str:
    """A path as written into outputs: relative to the project root when inside it (the kernels run there)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(p)


class RunLock:
    """outputs/<run>/book.lock: one book run at a time per run folder. Holds {"pid", "host", "created"}; a lock
    whose process is gone (or is another process under a reused pid) is taken over, with a line saying so."""

    NAME = "book.lock"

    def __init__(self, root: Path):
        self.path = Path(root) / self.NAME

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
                if self._alive(info):
                    raise BookError(f"{relative_to_project(self.path.parent)} is in use by another book run "
                                    f"(pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}); "
                                    f"wait for it to end, or use another run name (--run NAME)") from None
                print(f"taking over the stale lock {relative_to_project(self.path)} of pid {info.get('pid', '?')} "
                      f"(no longer running)", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time(),
                           "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}, f)
            return self
        raise BookError(f"could not take the lock {self.path}: another book run keeps taking it")

    def __exit__(self, *exc):
        with contextlib.suppress(FileNotFoundError):
            info = json.loads(self.path.read_text() or "{}")
            if info.get("pid") == os.getpid():
                self.path.unlink()


def select_runs(runs: list[ChapterRun], from_chapter: str | None = None, only: list[str] | None = None) -> list[ChapterRun]:
    """--from/--only: a chapter number ("05"), a chapter name ("05_train") or a chapter run's label
    ("05_train[causal]", "05_train[causal]@seed1"), exactly; anything else is an error listing the chapters."""
    def matches(r: ChapterRun, key: str) -> bool:
        return key in (r.chapter.number, r.chapter.stem, r.label)

    def check(option: str, key: str) -> None:
        if not any(matches(r, key) for r in runs):
            stems = list(dict.fromkeys(r.chapter.stem for r in runs))
            raise BookError(f"{option} {key}: no such chapter; give a chapter number, name or run label: "
                            f"{', '.join(stems)} (runs: {', '.join(r.label for r in runs)})")

    selected = runs
    if from_chapter is not None:
        check("--from", from_chapter)
        selected = runs[next(i for i, r in enumerate(runs) if matches(r, from_chapter)):]
    if only is not None:
        for key in only:
            check("--only", key)
        selected = [r for r in selected if any(matches(r, k) for k in only)]
        if not selected:
            raise BookError(f"--only {' '.join(only)}: none of these chapters comes at or after --from {from_chapter}")
    return selected


def declared_parameters(nb) -> set[str]:
    """The names the notebook's parameters cell (tag "parameters") assigns."""
    names = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                        names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


HEARTBEAT_S = 20.0  # a "still running" line when a chapter printed nothing for this long
_POLL_S = 1.0


def _dur(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressTail:
    """While a chapter runs: prints the lines its kernel appends to the progress file, and a heartbeat."""

    def __init__(self, path: Path, label: str):
        self.path, self.label, self._stop = Path(path), label, threading.Event()

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._t0 = self._last = time.monotonic()
        self._pos = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only
        if not end:
            return
        self._pos += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            if line.strip():
                print(f"      {line.strip()}", flush=True)
                self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(_POLL_S):
            self._drain()
            now = time.monotonic()
            if now - self._last >= HEARTBEAT_S:
                print(f"      still running {self.label} ({_dur(now - self._t0)})", flush=True)
                self._last = now

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._drain()


# The kernel's environment: where progress lines go; no progress bars (they would end up in the HTML reports).
KERNEL_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


@contextlib.contextmanager
def _environ(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kernel_config(ipc_dir: Path | None = None):
    """IPC transport for the kernel (a local socket file, not TCP on localhost): no unencrypted-TCP warning. The
    socket files go into `ipc_dir` (absolute; _ipc_folder), not jupyter_client's default "kernel-ipc-<n>" in the
    working folder, which a killed kernel (Ctrl-C) left behind in the project root."""
    from traitlets.config import Config as TraitletsConfig

    c = TraitletsConfig()
    c.KernelManager.transport = "ipc"
    if ipc_dir is not None:
        c.KernelManager.ip = str(Path(ipc_dir) / "kernel")
    return c


@contextlib.contextmanager
def _ipc_folder():
    """A private temporary folder for one chapter's kernel sockets, removed with whatever is in it when the chapter
    ends, however it ends (a socket path must stay under ~100 bytes: hence the system's temporary folder)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="causal-pi-kernel-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def _kernel_manager_class():
    """jupyter_client interrupts a kernel before shutting it down; at the end of a chapter the kernel is idle
    and the interrupt only races with the shutdown request ("[IPKernelApp] ERROR | KeyboardInterrupt caught in
    kernel." on the console now and then). This manager skips that interrupt; the shutdown itself is unchanged."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


@contextlib.contextmanager
def _kill_kernel_on_sigint():
    """Ctrl-C while a chapter runs: end its kernel first, before the client's clean-up talks to it (the kernel
    would print tracebacks about closed sockets), then raise KeyboardInterrupt as usual."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        _stop_children()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_children(timeout: float = 5.0) -> None:
    """Ends this process's children (the chapter's kernel) after Ctrl-C. SIGKILL: a terminated kernel prints a
    traceback about its closed sockets; its connection file and IPC socket files are removed here instead."""
    import psutil

    kids = psutil.Process().children(recursive=True)
    leftovers = []
    for k in kids:
        with contextlib.suppress(psutil.Error, ValueError, IndexError):
            cmd = k.cmdline()
            if "-f" in cmd:  # ipykernel_launcher -f <runtime>/kernel-<id>.json
                conn = Path(cmd[cmd.index("-f") + 1])
                leftovers += [conn, *conn.parent.glob(conn.stem + "-ipc*")]
        with contextlib.suppress(psutil.Error):
            k.kill()
    psutil.wait_procs(kids, timeout=timeout)
    for f in leftovers:
        with contextlib.suppress(OSError):
            f.unlink()


class PeakMemory:
    """Polls the resident memory of this process's children (the notebook kernel) in a thread."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        import psutil
        me = psutil.Process()

        def poll():
            while not self._stop.is_set():
                try:
                    rss = sum(c.memory_info().rss for c in me.children(recursive=True))
                    self.peak = max(self.peak, rss)
                except Exception:  # a child may vanish between listing and reading
                    pass
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def render_html(ipynb: Path, html: Path) -> None:
    import nbconvert
    import nbformat

    exporter = nbconvert.HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    write_text_atomic(html, body)  # never through a link at its path


def portable_notebook(ipynb: Path, user_paths: list[str] = ()) -> None:
    """The executed notebook without the checkout's absolute path: papermill's metadata (output_path, cwd) and
    whatever a cell printed become relative to the project root, where the kernels run. `user_paths` (absolute
    paths of the user's files, e.g. an attack file outside the project, passed in the chapter's overrides)
    become their portable form (config.portable_path: the file name)."""
    import re

    text = new = ipynb.read_text()
    for path in sorted(user_paths, key=len, reverse=True):
        new = new.replace(json.dumps(path)[1:-1], json.dumps(portable_path(path))[1:-1])  # as the JSON writes it
    root = re.escape(str(PROJECT_ROOT))
    new = re.sub(root + r"/", "", new)
    new = re.sub(root + r"(?![\w.-])", ".", new)
    if new != text:
        write_text_atomic(ipynb, new)


def _failed_cell(ipynb: Path, exec_count) -> str:
    import nbformat

    try:
        nb = nbformat.read(ipynb, as_version=4)
    except Exception:
        return ""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.get("execution_count") == exec_count:
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            return f"cell {i} (In [{exec_count}]: {first[:80]!r})"
    return f"In [{exec_count}]"


def execute_chapter(run: ChapterRun, cfg: Config, params_file: Path, overrides: dict, paths: RunPaths,
                    resume: bool = False) -> dict:
    import jupytext
    import papermill as pm

    if not run.source.exists():
        raise BookError(f"{run.label}: notebook source {run.source} is missing")
    nb = jupytext.read(run.source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out = paths.notebooks / f"{run.out_stem}.ipynb"
    html = paths.html / f"{run.out_stem}.html"
    parameters = {"params_file": relative_to_project(params_file), "overrides": run.overrides(cfg, overrides),
                  **run.parameters}
    if resume and "resume" in declared_parameters(nb):  # training chapters continue from their last checkpoint
        parameters["resume"] = True
    progress_file = paths.logs / f"progress_{run.out_stem}.log"
    t0 = time.time()
    error = None
    with ProgressTail(progress_file, run.label):  # also covers the HTML rendering: no silent stretch
        with PeakMemory() as mem, _environ({**KERNEL_ENV, progress.ENV: str(progress_file)}), _ipc_folder() as ipc, \
                _kill_kernel_on_sigint():
            try:
                pm.execute_notebook(nb, str(out), parameters=parameters, kernel_name="python3",
                                    cwd=str(PROJECT_ROOT), execution_timeout=cfg.run.chapter_timeout_s,
                                    progress_bar=False, log_output=False, config=_kernel_config(ipc),
                                    kernel_manager_class=_kernel_manager_class())
            except KeyboardInterrupt:
                _stop_children()
                raise
            except pm.PapermillExecutionError as e:
                error = f"{_failed_cell(out, e.exec_count)}: {e.ename}: {e.evalue}"
            except Exception as e:  # kernel death, cell timeout (nbclient CellTimeoutError), ...
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        record = {"label": run.label, "wall_s": round(time.time() - t0, 2),
                  "peak_rss_gb": round(mem.peak / 2**30, 3), "status": "failed" if error else "ok", "error": error,
                  "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if out.exists():
            try:
                portable_notebook(out, absolute_user_paths(cfg))
                render_html(out, html)
            except Exception as e:  # a rendering problem must not hide the chapter's own result
                print(f"  (could not render {html.name}: {e})", flush=True)
    return record


def _open_run(cfg: Config, params_file: Path, force: bool) -> tuple[RunPaths, dict]:
    paths = RunPaths(cfg.run_dir).make()
    state_path = paths.root / "run.json"
    state = read_state(paths.root)
    h = cfg.params_hash()
    if other_params(state, h) and not force:
        raise BookError(f"{relative_to_project(paths.root)} holds a run made with other params (hash "
                        f"{state['params_hash']} from {state.get('params_file')}; now {h} from "
                        f"{relative_to_project(params_file)}). Use another run name "
                        f"(--run NAME or run.name in the params) or delete that folder; --force resets it.")
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


def absolute_user_paths(cfg: Config) -> list[str]:
    """The absolute paths among the user's data files (data.attack_files, data.documents_file), as given."""
    given = [*cfg.data.attack_files, *([cfg.data.documents_file] if cfg.data.documents_file else [])]
    return [f for f in given if Path(f).is_absolute()]


def check_inputs(cfg: Config) -> None:
    """Everything `book check` checks beyond the params themselves, before any work: the shipped base (check_base)
    and the data files the params name (they exist, and parse as attack or documents files)."""
    check_base(cfg)
    try:
        check_data_files(cfg)
    except (ValueError, OSError, RecursionError) as e:  # DataError, AttackFileError: name the file, line and fix
        raise BookError(" ".join(str(e).split()) or type(e).__name__) from None


@contextlib.contextmanager
def open_run_folder(cfg: Config, params_file: Path, force: bool = False):
    """The one guard of every command that writes into a run folder (the book runner, `python -m
    causal_lib.training`): no symbolic link as or inside the run folder (run_folder.refuse_links), the run lock
    (RunLock: one writer at a time), and run.json's params hash (a folder of other params is refused, --force
    resets it). Yields (RunPaths, run.json's state); the lock is released at the end."""
    refuse_links(cfg.run_dir, levels=len(cfg.run.name.split("/")))
    with RunLock(cfg.run_dir):
        yield _open_run(cfg, params_file, force)


def resume_command(params: str, run_name: str | None, overrides: dict) -> str:
    sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items() if k != "run.name"]
    return (f"python -m causal_lib.book run --params {params}" + (f" --run {run_name}" if run_name else "")
            + (f" --set {' '.join(sets)}" if sets else "") + " --resume")


def run_book(params: str, from_chapter: str | None = None, only: list[str] | None = None, resume: bool = False,
             run_name: str | None = None, overrides: dict | None = None, force: bool = False) -> dict:
    overrides = dict(overrides or {})
    if run_name is not None:
        overrides["run.name"] = run_name
    params_file = resolve_params_path(params)
    cfg = load_config(params_file, overrides)
    check_run_name(cfg.run.name)  # before anything is written
    check_inputs(cfg)
    selected = select_runs(chapter_runs(cfg), from_chapter, only)
    with open_run_folder(cfg, params_file, force) as (paths, state):
        return _run_selected(cfg, params_file, paths, state, selected, overrides, resume,
                             resume_command(params, cfg.run.name if "run.name" in overrides else None, overrides))


def _run_selected(cfg: Config, params_file: Path, paths: RunPaths, state: dict, selected: list[ChapterRun],
                  overrides: dict, resume: bool, resume_cmd: str) -> dict:
    missing = [r.label for r in selected if not r.source.exists()]
    if missing:
        print(f"not written yet, skipped: {', '.join(missing)}", flush=True)
        selected = [r for r in selected if r.source.exists()]
    if resume:
        kept = []
        for r in selected:
            why = resume_reason(state["chapters"].get(r.label), chapter_hashes(r, cfg))
            print(f"{r.label}: {why or 'skipped: ok, unchanged'}", flush=True)
            if why:
                kept.append(r)
        selected = kept
    print(f"causal-pi book: {len(selected)} chapter run(s) -> {relative_to_project(paths.root)}  "
          f"(params {params_file.name}, hash {state['params_hash']})", flush=True)
    t_book = time.time()
    run = None  # the chapter run in progress (None between chapter runs)
    try:
        for i, run in enumerate(selected, 1):
            print(f"[{i}/{len(selected)}] {run.label} ...", flush=True)
            hashes = chapter_hashes(run, cfg)  # before it runs: the source it ran from
            record = {**execute_chapter(run, cfg, params_file, overrides, paths, resume=resume), **hashes}
            state["chapters"][run.label] = record
            write_json(paths.root / "run.json", state)
            write_json(paths.metrics / "chapters.json", state["chapters"])
            _write_index(paths)
            done, run = run, None
            if record["status"] != "ok":
                raise BookError(f"chapter {done.label} failed at {record['error']}\n"
                                f"  partial notebook: {relative_to_project(paths.notebooks / (done.out_stem + '.ipynb'))}\n"
                                f"  earlier chapters' outputs are kept; after fixing, rerun from here with "
                                f"--from {done.chapter.number} (or --resume)")
            print(f"      ok in {record['wall_s']:.1f} s, peak RSS {record['peak_rss_gb']:.2f} GB "
                  f"(book {time.time() - t_book:.0f} s)", flush=True)
    except KeyboardInterrupt:
        what = f"stopped {run.label} and its kernel" if run is not None else "stopped between chapters"
        if run is not None:
            with contextlib.suppress(BaseException):
                state["chapters"][run.label] = {"label": run.label, "status": "interrupted", "error": "Ctrl-C",
                                                "wall_s": 0, "peak_rss_gb": 0,
                                                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                write_json(paths.root / "run.json", state)
                write_json(paths.metrics / "chapters.json", state["chapters"])
                _write_index(paths)
        raise BookInterrupted(f"interrupted: {what}; earlier chapters are kept. "
                              f"Continue with: {resume_cmd}") from None
    _write_index(paths)
    if not selected:
        print("nothing to run", flush=True)
    print(f"done in {time.time() - t_book:.0f} s: {relative_to_project(paths.html / 'index.html')}", flush=True)
    return state


def _write_index(paths: RunPaths) -> None:

    write_index(paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "check", "list"):
        p = sub.add_parser(name)
        p.add_argument("--params", default="params/default.yaml")
        p.add_argument("--run", dest="run_name", help="run folder name under outputs/ (default: run.name)")
        p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="override params, e.g. train.epochs=1 (repeatable: every --set counts)")
        if name == "run":
            p.add_argument("--from", dest="from_chapter", help="start at this chapter (e.g. 05)")
            p.add_argument("--only", nargs="+", help="run only these chapters (e.g. 01 07, 05_train[causal])")
            p.add_argument("--resume", action="store_true",
                           help="skip chapters that finished ok here with unchanged notebook source and params")
            p.add_argument("--force", action="store_true", help="reuse a run folder made with other params")
    a = ap.parse_args(argv)
    try:
        overrides = parse_overrides(a.set)
        if a.cmd == "run":
            run_book(a.params, a.from_chapter, a.only, a.resume, a.run_name, overrides, a.force)
            return 0
        if a.run_name is not None:
            overrides["run.name"] = a.run_name
        cfg = load_config(a.params, overrides)
        check_run_name(cfg.run.name)
        if a.cmd == "check":
            check_inputs(cfg)
            print(f"{a.params}: OK (run {cfg.run.name}, params hash {cfg.params_hash()})")
        else:
            for r in chapter_runs(cfg):
                print(f"{r.label:32s} {'' if r.source.exists() else '(missing)'}")
        return 0
    except BookInterrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("interrupted before any chapter started; nothing was run", file=sys.stderr, flush=True)
        return 130
    except (ConfigError, BookError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
