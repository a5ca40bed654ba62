"""One chapter run in a Jupyter kernel: papermill executes the notebook (its parameters cell gets params_file,
overrides, the run's own parameters and, where declared, resume), the lines its loops report (causal_lib.core.progress)
are printed while it runs with a "still running" line when nothing new came for HEARTBEAT_S, the kernel's peak
memory is measured, Ctrl-C ends the kernel first, and the executed notebook is made portable and rendered to HTML."""
from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from causal_lib.book.chapters import ChapterRun
from causal_lib.book.common import BookError, relative_to_project
from causal_lib.config import PROJECT_ROOT, Config, portable_path
from causal_lib.core import progress
from causal_lib.core.run_folder import RunPaths, write_text_atomic


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
                print(f"      still running {self.label} ({progress.duration(now - self._t0)})", flush=True)
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


def absolute_user_paths(cfg: Config) -> list[str]:
    """The absolute paths among the user's data files (data.attack_files, data.documents_file), as given."""
    given = [*cfg.data.attack_files, *([cfg.data.documents_file] if cfg.data.documents_file else [])]
    return [f for f in given if Path(f).is_absolute()]
