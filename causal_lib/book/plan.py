"""Which chapter runs a book run executes: --from/--only, and what --resume runs again and why.

A finished chapter run's record in run.json keeps `source_hash` (its notebook's bytes), `chapter_params_hash` (the
run's params hash, its own parameters such as `defense`, a seed replica's seed) and `upstream_hash` with
`upstream_products`: a digest of each product of each chapter run it reads (book.chapters' table), taken when it
finished. A product's digest covers every file its pattern matches (a folder: every file under it), by relative
path: a file of up to SMALL_FILE bytes by the sha256 of its content, a larger one (weights, data splits) by its size
and modification time (nanoseconds) only, so that a rewrite of a checkpoint counts as a change without reading
gigabytes; names starting with "." (temporary files and folders) are left out, and nothing matched is "missing".

--resume runs a chapter run again when it is not recorded as finished ok, when its source or params changed, when
a chapter run it reads runs again before it (so every dependent of a chapter that runs again runs too), or when
an upstream product changed since it ran; one line per chapter run says which and why.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from causal_lib.book.chapters import ChapterRun, upstream_runs
from causal_lib.book.common import BookError
from causal_lib.config import Config
from causal_lib.core.hashing import bytes_hash, json_hash

SMALL_FILE = 1 << 20  # bytes: files up to this size are hashed by content, larger ones by size and mtime
MISSING = "missing"
UPSTREAM_KEYS = ("upstream_hash", "upstream_products")  # about this folder's files: run.json only (shared_records)


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


def chapter_hashes(run: ChapterRun, cfg: Config) -> dict:
    """What a chapter run's record keeps to tell, on --resume, whether it would run the same way again:
    `source_hash` of its notebook source (the .py file's bytes) and `chapter_params_hash` of its params (the
    run's params hash, the chapter run's own papermill parameters such as `defense`, a seed replica's seed)."""
    params = {"params_hash": cfg.params_hash(), "parameters": run.parameters, "seed": run.seed}
    return {"source_hash": bytes_hash(run.source.read_bytes()), "chapter_params_hash": json_hash(params, default=str)}


def _files(path: Path):
    """`path` itself when a file, else every file under it (links not followed; names starting with "." left out)."""
    if path.is_file():
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def product_digest(folder: Path, pattern: str) -> str:
    """The digest (16 hex) of what `pattern` (a glob relative to the run folder `folder`) matches, or MISSING."""
    h, found = hashlib.sha256(), False
    for match in sorted(Path(folder).glob(pattern)):
        if any(part.startswith(".") for part in match.relative_to(folder).parts):
            continue
        for f in _files(match):
            found = True
            h.update(f.relative_to(folder).as_posix().encode() + b"\0")
            try:  # a file that vanished or cannot be read enters as its error: the chapter's record is still saved
                st = f.stat()
                if st.st_size <= SMALL_FILE:
                    h.update(b"c" + hashlib.sha256(f.read_bytes()).digest())
                else:
                    h.update(f"s{st.st_size}m{st.st_mtime_ns}".encode())
            except OSError as e:
                h.update(f"e{e.errno}".encode())
    return h.hexdigest()[:16] if found else MISSING


def upstream_record(run: ChapterRun, runs: list[ChapterRun], root: Path) -> dict:
    """`upstream_products` ({upstream run's label: {product: digest}}) and their `upstream_hash`, from the files
    now in the run folder `root`; {} for a chapter run that reads no other."""
    products = {u.label: {p: product_digest(u.folder(root), p) for p in u.products()}
                for u in upstream_runs(run, runs)}
    if not products:
        return {}
    return {"upstream_products": products,
            "upstream_hash": json_hash(products)}


def shared_records(records: dict) -> dict:
    """The chapter records as metrics/chapters.json shares them: without the upstream digests (mtimes of this
    folder's files), so that two runs of the same params and seed have the same metrics."""
    return {label: {k: v for k, v in rec.items() if k not in UPSTREAM_KEYS} for label, rec in records.items()}


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


def upstream_reason(record: dict, now: dict) -> str | None:
    """Why --resume must run a chapter run again because what it read changed (upstream_record `now` against its
    record), naming the first product that changed and its chapter run; None when nothing did."""
    if not now or record.get("upstream_hash") == now["upstream_hash"]:
        return None
    if "upstream_hash" not in record:
        return "recorded without upstream product hashes (an older run record), running again"
    before = record.get("upstream_products") or {}
    changed = [(p, label, d) for label, digests in now["upstream_products"].items()
               for p, d in digests.items() if (before.get(label) or {}).get(p) != d]
    if not changed:
        return "its upstream chapter runs changed since it ran, running again"
    p, label, d = changed[0]
    more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
    return f"upstream product {p} of {label} {'is missing' if d == MISSING else 'changed since it ran'}{more}, " \
           f"running again"


def resume_plan(selected: list[ChapterRun], runs: list[ChapterRun], records: dict, cfg: Config,
                root: Path) -> list[tuple[ChapterRun, str | None]]:
    """Each selected chapter run with why --resume runs it again, or None to skip it (`runs`: every chapter run of
    the book, for the upstream ones; `records`: run.json's chapter records; `root`: the run folder)."""
    again, plan = set(), []
    for r in selected:
        record = records.get(r.label)
        why = resume_reason(record, chapter_hashes(r, cfg))
        ups = upstream_runs(r, runs)
        if why is None:
            first = next((u.label for u in ups if u.label in again), None)
            why = f"upstream {first} runs again before it, running again" if first else None
        if why is None and ups:
            why = upstream_reason(record, upstream_record(r, runs, root))
        if why:
            again.add(r.label)
        plan.append((r, why))
    return plan
