"""Markdown reports under outputs/<run>/reports/ and the verdicts the run index shows."""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence
from causal_lib.core.run_folder import RunPaths, write_json, write_text_atomic
from causal_lib.data.records import printable


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(rows: Iterable[dict], columns: Sequence[str] | None = None) -> str:
    rows = list(rows)
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    # a cell is one line with its pipes escaped and no control or bidi character (a family or instruction_type
    # from an attack file could hold an ANSI sequence or U+202E): those are written as escapes (\\x1b, \\u202e)
    esc = lambda v: printable(fmt(v).replace("|", "\\|").replace("\n", " "))
    lines = ["| " + " | ".join(printable(c) for c in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(esc(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(paths: RunPaths, name: str, markdown: str) -> Path:
    path = paths.reports / name
    write_text_atomic(path, markdown.rstrip() + "\n")
    return path


def write_report_section(paths: RunPaths, name: str, section: str, markdown: str, title: str | None = None) -> Path:
    """Replace one section of a report that several chapters write (e.g. WEEK1_SETUP_REPORT.md)."""
    path = paths.reports / name
    text = path.read_text() if path.exists() else f"# {title or name.removesuffix('.md').replace('_', ' ')}\n"
    begin, end = f"<!-- section:{section} -->", f"<!-- /section:{section} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_text_atomic(path, text)
    return path


def record_verdict(paths: RunPaths, chapter: str, verdict: str, detail: str = "") -> dict:
    """One line per chapter for the run index: verdict is PASS / FAIL / a chapter-specific word."""
    path = paths.metrics / "verdicts.json"
    verdicts = json.loads(path.read_text()) if path.exists() else {}
    verdicts[chapter] = {"verdict": verdict, "detail": detail,
                         "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(path, verdicts)
    print(f"VERDICT {chapter}: {verdict}" + (f" ({detail})" if detail else ""))
    return verdicts[chapter]


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
