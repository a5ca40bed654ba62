"""The evaluation command line (`python -m causal_lib.evaluation`): evaluate one checkpoint folder on the
test split (plus optional attack files) under a defense's view of the records, and write the summary."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from causal_lib.core.run_folder import RunPaths, write_json
from causal_lib.config import ConfigError, load_config
from causal_lib.data import attacks
from causal_lib.data.build import data_seed
from causal_lib.data.records import load_split, printable
from causal_lib.defenses import registry
from causal_lib.defenses.load import block_for, records_for
from causal_lib.evaluation.run import evaluate_records
from causal_lib.evaluation.summary import report_lines, summarise
from causal_lib.models.checkpoints import CheckpointError, load_checkpoint
from causal_lib.models.load import ModelLoadError


class EvalCLIError(RuntimeError):
    """A command-line input that cannot be used; the message names it and says what to do."""


def _load_test_records(data_dir: Path) -> list:
    """The saved test split (data.records.load_split: validated; a missing file says which chapter builds it)."""

    return load_split(data_dir, "test")


def _expand_attack_files(files: Sequence[str], test_records: list, cfg) -> list:
    """Each external attack file expanded against the clean test items, exactly like the built-in families."""

    clean = [r for r in test_records if r.kind == "clean"]
    out = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise EvalCLIError(f"attack file {f} not found: pass the path of a JSONL attack file (see README)")
        try:
            templates = attacks.load_attack_file(p)
        except (ValueError, KeyError) as e:  # AttackFileError names the file, the line and the fix
            msg = str(e)
            raise EvalCLIError(msg if str(p) in msg else f"attack file {f}: {msg}") from None
        try:
            out.extend(attacks.expand_attack_file(templates, clean, seed=data_seed(cfg), source=p.name,
                                                  held_out_families=cfg.data.held_out_families))
        except attacks.AttackFileError as e:  # e.g. a canary already in a clean document (names the line)
            raise EvalCLIError(f"attack file {f}: {e}") from None
    return out


def _defense_view(defense: str | None, records: list, model, tok, cfg, data_dir: Path):
    """What the named defense needs at test time: its view of the records through the registry (StruQ/SecAlign and
    their original recipes read their structured prompt; defenses.load.records_for), input filtering blocks with the run's filter (outputs/<run>/ = data_dir/..)."""
    if not defense or defense == "none":
        return records, None

    if defense not in registry.names():
        raise EvalCLIError(f"--defense-name {defense!r}: not one of {registry.names()} (or leave it out for a plain model)")
    if defense == "filter":

        try:
            return records, block_for(cfg, RunPaths(data_dir.parent), "filter", model, tok)
        except (ImportError, FileNotFoundError) as e:
            raise EvalCLIError(f"--defense-name filter: the run's input filter could not be loaded ({e}); evaluate the "
                               f"'filter' defense in the book first (chapter 08) or leave out --defense-name") from None
    # every other defense through the registry (StruQ, SecAlign and their original recipes: their structured prompt)
    return records_for(defense, records, tok), None


def _check_out_path(out: str) -> Path:
    """--out checked before any work: a file path (not a folder) in a folder that exists or can be made, writable.
    The write itself is atomic (run_folder.write_json): a failure leaves neither half a file nor a temporary one."""
    p = Path(out)
    if not out or out.endswith(("/", os.sep)) or p.is_dir():
        raise EvalCLIError(f"--out {out}: is a folder; pass the path of the result JSON file, e.g. {Path(out) / 'results.json'}")
    if p.exists() and not p.is_file():
        raise EvalCLIError(f"--out {out}: exists and is not a regular file; pass the path of a JSON file to write")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:  # missing folders are made at the write: where would it start?
        folder = folder.parent
    if not folder.is_dir():
        raise EvalCLIError(f"--out {out}: {folder} is not a folder, so the result cannot be written there; "
                           f"pass a path inside a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EvalCLIError(f"--out {out}: the folder {folder} is not writable; pass a path in a folder you can write to")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.evaluation",
                                 description="Evaluate a saved model on the test split and/or external attack files.")
    ap.add_argument("--model", required=True, help="checkpoint folder (save_checkpoint output, e.g. .../best_model)")
    ap.add_argument("--attacks", action="append", default=[], help="JSONL attack file (repeatable)")
    ap.add_argument("--data-dir", required=True, help="outputs/<run>/data written by chapter 02")
    ap.add_argument("--params", default="params/default.yaml")
    ap.add_argument("--out", required=True, help="result JSON (summary + per-item results)")
    ap.add_argument("--defense-name", default=None)
    ap.add_argument("--documents", default=None,
                    help="JSONL of one's own documents (id, document, task/question, ideal_answer): the attack files "
                         "run on these instead of the world's test items (see README, 'Your own attacks')")
    ap.add_argument("--no-builtin", action="store_true",
                    help="evaluate only the attack files' items and the clean test items (their twins), not the built-in "
                         "attacks, look-alikes or SEP probes")
    args = ap.parse_args(argv)
    try:
        return _run_cli(args)
    except EvalCLIError as e:
        print(f"error: {printable(e)}", file=sys.stderr)  # control/bidi characters from a file shown escaped
        return 2
    except KeyboardInterrupt:
        print(interrupted_line(args.out), file=sys.stderr)
        return 130


def interrupted_line(out=None) -> str:
    """The one line a Ctrl-C prints: nothing was written (the result is written atomically, at the end)."""
    where = f"nothing was written to --out {printable(out)}" if out else "nothing was written"
    return f"interrupted: the evaluation stopped, {where}; run the same command again to evaluate from the start"


def _run_cli(args) -> int:
    out = _check_out_path(args.out)
    from causal_lib.core import distributed
    distributed.init()  # under torchrun / accelerate launch: generation split by rank, rank 0 writes (one process: no-op)
    try:
        cfg = load_config(args.params)
        registry.check_params(cfg)
    except ConfigError as e:
        raise EvalCLIError(str(e)) from None
    model_dir, data_dir = Path(args.model), Path(args.data_dir)
    if not model_dir.is_dir():
        raise EvalCLIError(f"model folder {model_dir} not found: train the model first (chapters 04/05) or pass "
                           f"--model with a checkpoint folder (e.g. outputs/<run>/checkpoints/<defense>/best_model)")
    if not data_dir.is_dir():
        raise EvalCLIError(f"data folder {data_dir} not found: run chapter 02 first "
                           f"(python -m causal_lib.book run --params {args.params} --from 02)")
    documents_file = args.documents
    try:  # one's own documents replace the world's test items (the attack files then run on them)
        test = attacks.load_documents_file(documents_file) if documents_file else _load_test_records(data_dir)
    except attacks.AttackFileError as e:
        raise EvalCLIError(str(e)) from None
    except (FileNotFoundError, ValueError) as e:
        hint = "" if "chapter 02" in str(e) else " (rebuild it: run chapter 02)"
        raise EvalCLIError(f"data folder {data_dir}: {e}{hint}") from None
    if not any(r.kind == "clean" for r in test):
        raise EvalCLIError(f"data folder {data_dir}: the test split has no clean items; rebuild the data "
                           f"(chapter 02) with data.n_test > 0")
    extra = _expand_attack_files(args.attacks, test, cfg)
    # A file listed in data.attack_files is already in test.jsonl (same ids): keep one copy.
    fresh = {r.id for r in extra}
    records = [r for r in test if r.id not in fresh and not (args.no_builtin and r.kind != "clean")] + extra
    if not records:
        raise EvalCLIError("nothing to evaluate: the test set is empty")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command line's stderr is for errors: one line each
    try:
        model, tok = load_checkpoint(model_dir, cfg.model, is_trainable=False)
    except (CheckpointError, ModelLoadError) as e:
        raise EvalCLIError(str(e)) from None
    torch.set_num_threads(distributed.threads_per_process(cfg.run.torch_threads))
    records, block = _defense_view(args.defense_name, records, model, tok, cfg, data_dir)
    t0 = time.perf_counter()
    results = evaluate_records(model, tok, records, cfg.eval, block=block,
                               max_length=max(cfg.model.max_seq_length - cfg.eval.max_new_tokens, 1),
                               seed=cfg.run.seed, items_seed=data_seed(cfg))
    summary = summarise(results, cfg.stats.alpha)
    if not distributed.is_main_process():
        return 0
    try:
        write_json(out, {"defense": args.defense_name, "model": str(model_dir), "data_dir": str(data_dir),
                         "attack_files": list(args.attacks), "params_hash": cfg.params_hash(),
                         "seconds": time.perf_counter() - t0, "summary": summary,
                         "items": [r.to_dict() for r in results]})
    except OSError as e:  # e.g. the disk filled up: the atomic write left no partial or temporary file
        raise EvalCLIError(f"--out {out}: the result could not be written ({e.strerror or e}); "
                           f"free space or pass another --out, then run again") from None
    a = summary["asr"]
    print(printable(f"{args.defense_name or model_dir}: ASR {a['k']}/{a['n']}, benign accuracy "
                    f"{summary['benign_accuracy']['k']}/{summary['benign_accuracy']['n']} -> {args.out}"))
    for line in report_lines(summary):
        print(printable(line))  # family / instruction_type / source come from files: escaped, never raw
    return 0
