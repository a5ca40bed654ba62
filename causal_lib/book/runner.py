"""The runner: executes the chapters in order with papermill, renders HTML, keeps a run folder honest.

    python -m causal_lib.book run --params params/default.yaml [--from 05] [--only 07] [--resume]
    python -m causal_lib.book check --params params/smoke.yaml      # validate params only
    python -m causal_lib.book list --params params/default.yaml     # the chapter runs, in order

The list of chapters is `CHAPTERS` below and nowhere else.

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
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from causal_lib.book.run_folder import SEEDS_DIR, RunPaths, notebook_stem, replica_label, write_json
from causal_lib.config import PROJECT_ROOT, Config, ConfigError, load_config, resolve_params_path
from causal_lib.data.build import data_seed
from causal_lib.defenses import registry
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
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(body)


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
    parameters = {"params_file": str(params_file), "overrides": run.overrides(cfg, overrides), **run.parameters}
    if resume:  # training chapters continue from their last complete trainer checkpoint
        parameters["resume"] = True
    t0 = time.time()
    error = None
    with PeakMemory() as mem:
        try:
            pm.execute_notebook(nb, str(out), parameters=parameters, kernel_name="python3", cwd=str(PROJECT_ROOT),
                                execution_timeout=cfg.run.chapter_timeout_s, progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            error = f"{_failed_cell(out, e.exec_count)}: {e.ename}: {e.evalue}"
        except Exception as e:  # kernel death, cell timeout (nbclient CellTimeoutError), ...
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    record = {"label": run.label, "wall_s": round(time.time() - t0, 2), "peak_rss_gb": round(mem.peak / 2**30, 3),
              "status": "failed" if error else "ok", "error": error,
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if out.exists():
        try:
            render_html(out, html)
        except Exception as e:  # a rendering problem must not hide the chapter's own result
            print(f"  (could not render {html.name}: {e})", flush=True)
    return record


def _open_run(cfg: Config, params_file: Path, force: bool) -> tuple[RunPaths, dict]:
    paths = RunPaths(cfg.run_dir).make()
    state_path = paths.root / "run.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    h = cfg.params_hash()
    if state.get("params_hash") not in (None, h) and not force:
        raise BookError(f"{paths.root} holds a run made with other params (hash {state['params_hash']} from "
                        f"{state.get('params_file')}; now {h} from {params_file}). Use another run name "
                        f"(--run NAME or run.name in the params) or delete that folder; --force resets it.")
    if state.get("params_hash") != h:
        state = {"params_hash": h, "chapters": {}}
    state.update(params_file=str(params_file), seed=cfg.run.seed, config=cfg.to_dict())
    write_json(state_path, state)
    return paths, state


def run_book(params: str, from_chapter: str | None = None, only: list[str] | None = None, resume: bool = False,
             run_name: str | None = None, overrides: dict | None = None, force: bool = False) -> dict:
    overrides = dict(overrides or {})
    if run_name:
        overrides["run.name"] = run_name
    params_file = resolve_params_path(params)
    cfg = load_config(params_file, overrides)
    paths, state = _open_run(cfg, params_file, force)
    runs = chapter_runs(cfg)
    selected = runs
    if from_chapter:
        idx = next((i for i, r in enumerate(runs) if r.label.startswith(from_chapter)), None)
        if idx is None:
            raise BookError(f"--from {from_chapter}: no such chapter; chapters: {', '.join(r.label for r in runs)}")
        selected = runs[idx:]
    if only:
        selected = [r for r in selected if any(r.label.startswith(o) for o in only)]
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
    print(f"causal-pi book: {len(selected)} chapter run(s) -> {paths.root}  (params {params_file.name}, "
          f"hash {state['params_hash']})", flush=True)
    t_book = time.time()
    for i, run in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {run.label} ...", flush=True)
        hashes = chapter_hashes(run, cfg)  # before it runs: the source it ran from
        record = {**execute_chapter(run, cfg, params_file, overrides, paths, resume=resume), **hashes}
        state["chapters"][run.label] = record
        write_json(paths.root / "run.json", state)
        write_json(paths.metrics / "chapters.json", state["chapters"])
        _write_index(paths)
        if record["status"] != "ok":
            raise BookError(f"chapter {run.label} failed at {record['error']}\n"
                            f"  partial notebook: {paths.notebooks / (run.out_stem + '.ipynb')}\n"
                            f"  earlier chapters' outputs are kept; after fixing, rerun from here with "
                            f"--from {run.chapter.number} (or --resume)")
        print(f"      ok in {record['wall_s']:.1f} s, peak RSS {record['peak_rss_gb']:.2f} GB "
              f"(book {time.time() - t_book:.0f} s)", flush=True)
    print(f"done in {time.time() - t_book:.0f} s: {paths.html / 'index.html'}", flush=True)
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
        p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override params, e.g. train.epochs=1")
        if name == "run":
            p.add_argument("--from", dest="from_chapter", help="start at this chapter (e.g. 05)")
            p.add_argument("--only", nargs="*", help="run only these chapters (e.g. 01 07)")
            p.add_argument("--resume", action="store_true",
                           help="skip chapters that finished ok here with unchanged notebook source and params")
            p.add_argument("--force", action="store_true", help="reuse a run folder made with other params")
    a = ap.parse_args(argv)
    try:
        overrides = parse_overrides(a.set)
        if a.cmd == "run":
            run_book(a.params, a.from_chapter, a.only, a.resume, a.run_name, overrides, a.force)
            return 0
        if a.run_name:
            overrides["run.name"] = a.run_name
        cfg = load_config(a.params, overrides)
        if a.cmd == "check":
            print(f"{a.params}: OK (run {cfg.run.name}, params hash {cfg.params_hash()})")
        else:
            for r in chapter_runs(cfg):
                print(f"{r.label:32s} {'' if r.source.exists() else '(missing)'}")
        return 0
    except (ConfigError, BookError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
