"""The runner: executes the chapters in order with papermill, renders HTML, keeps a run folder honest.

    python -m causal_lib.book run --params params/default.yaml [--from 05] [--only 07] [--resume]
    python -m causal_lib.book check --params params/smoke.yaml      # validate params only
    python -m causal_lib.book list --params params/default.yaml     # the chapter runs, in order

The chapters, what each reads and writes, and their labels are the table in causal_lib/book/chapters.py and
nowhere else. The runner's parts: book.plan (--from/--only, what --resume runs again), book.lock (the run folder's
lock and params guard), book.kernel (one chapter run in a kernel, its progress lines and HTML).

Run folders are outputs/<name>/ with a plain name (--run, run.name: letters, digits, -_. ; no '/', '..' or
absolute path). One book run at a time per run folder: outputs/<name>/book.lock holds the runner's pid (a lock
left by a dead process is taken over). --from/--only take a chapter number ("05"), a chapter name ("05_train")
or a chapter run's label ("05_train[causal]"). While a chapter runs, the lines its loops report
(causal_lib.core.progress) are printed, with a "still running" line when nothing new came for 20 s. Ctrl-C
stops the chapter and its kernel and prints the --resume command (exit status 130).

`--resume` skips a chapter run only when its record in run.json says it finished ok AND it was made from
the same notebook source (sha256 of notebooks/NN_*.py), the same params (the run's params hash plus the
chapter run's own parameters, e.g. `defense`, and its seed) and the same upstream products (the files of the
chapters it reads, as chapters.py declares them, hashed when it finished: book.plan says how); otherwise it runs
again, and so does every chapter run after it that reads it. The runner prints one line per chapter run saying
which and why (e.g. "upstream product metrics/dataset.json of 02_dataset_validation changed since it ran"). A
record written before these hashes were kept counts as changed. Only the notebook file is hashed, not the
causal_lib code it calls. Under --resume the training chapters (04, 05) still continue from their last complete
trainer checkpoint, also when they run again because their source changed; delete the checkpoints (or run
without --resume) to train from scratch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from causal_lib.book.chapters import ChapterRun, chapter_runs
from causal_lib.book.common import BookError, BookInterrupted, relative_to_project
from causal_lib.book.kernel import execute_chapter
from causal_lib.book.lock import open_run_folder
from causal_lib.book.plan import chapter_hashes, resume_plan, select_runs, shared_records, upstream_record
from causal_lib.book.share import write_index
from causal_lib.config import (RUN_NAME_RULE, Config, ConfigError, load_config, parse_overrides,
                               resolve_params_path)
from causal_lib.core.run_folder import RunFolderError, RunPaths, write_json
from causal_lib.data.build import check_data_files
from causal_lib.defenses import registry
from causal_lib.training.shipped_adapter import check_shipped_adapter, uses_shipped_adapter
from causal_lib.training.shipped_base import ShippedBaseError, check_shipped_base


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


def check_inputs(cfg: Config) -> None:
    """Everything `book check` checks beyond the params themselves, before any work: the shipped base (check_base)
    and the data files the params name (they exist, and parse as attack or documents files)."""
    check_base(cfg)
    try:
        check_data_files(cfg)
    except (ValueError, OSError, RecursionError) as e:  # DataError, AttackFileError: name the file, line and fix
        raise BookError(" ".join(str(e).split()) or type(e).__name__) from None


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
    registry.check_params(cfg)  # the names config.py cannot check: defenses, tasks, attack families
    check_run_name(cfg.run.name)  # before anything is written
    check_inputs(cfg)
    runs = chapter_runs(cfg)
    selected = select_runs(runs, from_chapter, only)
    with open_run_folder(cfg, params_file, force) as (paths, state):
        return _run_selected(cfg, params_file, paths, state, runs, selected, overrides, resume,
                             resume_command(params, cfg.run.name if "run.name" in overrides else None, overrides))


def _save(paths: RunPaths, state: dict) -> None:
    """run.json (every record whole), metrics/chapters.json (plan.shared_records) and the index."""
    write_json(paths.root / "run.json", state)
    write_json(paths.metrics / "chapters.json", shared_records(state["chapters"]))
    write_index(paths)


def _run_selected(cfg: Config, params_file: Path, paths: RunPaths, state: dict, runs: list[ChapterRun],
                  selected: list[ChapterRun], overrides: dict, resume: bool, resume_cmd: str) -> dict:
    missing = [r.label for r in selected if not r.source.exists()]
    if missing:
        print(f"not written yet, skipped: {', '.join(missing)}", flush=True)
        selected = [r for r in selected if r.source.exists()]
    if resume:
        kept = []
        for r, why in resume_plan(selected, runs, state["chapters"], cfg, paths.root):
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
            record = {**execute_chapter(run, cfg, params_file, overrides, paths, resume=resume), **hashes,
                      **upstream_record(run, runs, paths.root)}  # after it ran: what it read, as it left it
            state["chapters"][run.label] = record
            _save(paths, state)
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
                _save(paths, state)
        raise BookInterrupted(f"interrupted: {what}; earlier chapters are kept. "
                              f"Continue with: {resume_cmd}") from None
    write_index(paths)
    if not selected:
        print("nothing to run", flush=True)
    print(f"done in {time.time() - t_book:.0f} s: {relative_to_project(paths.html / 'index.html')}", flush=True)
    return state


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
                           help="skip chapters that finished ok here with unchanged notebook source, params and "
                                "upstream products")
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
        registry.check_params(cfg)
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
