"""Sharing an executed run: outputs/<run>/html/index.html and a single archive of the run.

    python -m causal_lib.book.share archive --run default [--with-checkpoints]
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import tarfile
from pathlib import Path

from causal_lib.book.chapters import chapter_label, label_file_stem, parse_label
from causal_lib.core.run_folder import SEEDS_DIR, RunPaths, write_text_atomic
from causal_lib.config import PROJECT_ROOT, RUN_NAME_RULE, is_plain_name


def write_index(paths: RunPaths) -> Path:
    """index.html links every chapter's HTML and every markdown report, with a one-line verdict each."""
    state_path = paths.root / "run.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"chapters": {}}
    verdict_path = paths.metrics / "verdicts.json"
    verdicts = json.loads(verdict_path.read_text()) if verdict_path.exists() else {}
    rows = []
    for label, rec in state.get("chapters", {}).items():
        try:
            chapter, variant, seed = parse_label(label)
            stem = label_file_stem(label)
        except ValueError:  # not a label the runner writes: listed as it is
            chapter, variant, seed, stem = label, None, None, label
        own_label = chapter_label(chapter, variant)
        if seed is None:
            v = verdicts.get(label, {})
        else:  # a seed replica records its verdicts in its own folder, under the chapter's plain label
            replica = paths.replica(seed).metrics / "verdicts.json"
            v = (json.loads(replica.read_text()) if replica.exists() else {}).get(own_label, {})
        verdict = v.get("verdict") or ("FAILED: " + (rec.get("error") or "") if rec.get("status") != "ok" else "ran")
        rows.append(f"<tr><td><a href='{html.escape(stem)}.html'>{html.escape(label)}</a></td>"
                    f"<td>{html.escape(verdict)}</td><td>{html.escape(v.get('detail', ''))}</td>"
                    f"<td>{rec.get('wall_s', 0):.0f} s</td><td>{rec.get('peak_rss_gb', 0):.2f} GB</td></tr>")
    reports = sorted(paths.reports.glob("*.md"))
    report_rows = [f"<li><a href='../reports/{html.escape(p.name)}'>{html.escape(p.name)}</a></li>" for p in reports]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>causal-pi run {html.escape(paths.root.name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body><h1>causal-pi run <code>{html.escape(paths.root.name)}</code></h1>
<p>params {html.escape(str(state.get('params_file', '')))}, hash {html.escape(str(state.get('params_hash', '')))}, seed {html.escape(str(state.get('seed', '')))}</p>
<h2>Chapters</h2><table><tr><th>chapter</th><th>verdict</th><th>detail</th><th>wall</th><th>peak RSS</th></tr>
{''.join(rows)}</table>
<h2>Reports</h2><ul>{''.join(report_rows)}</ul>
<p>Metrics as JSON: <a href='../metrics/'>metrics/</a></p></body></html>"""
    out = paths.html / "index.html"
    write_text_atomic(out, page)  # never through a link at its path
    return out


def archive_run(run_dir: Path, with_checkpoints: bool = False, out: Path | None = None) -> Path:
    """Pack notebooks, HTML, reports, metrics (and data manifests) of a run into one .tar.gz."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no run.json): run the book first")
    out = Path(out or run_dir.parent / f"{run_dir.name}.tar.gz")
    parts = ["run.json", "notebooks", "html", "reports", "metrics", "data/manifest.json"]
    for replica in sorted((run_dir / SEEDS_DIR).glob("seed_*")):  # seed replicas (run.seeds)
        parts += [str(replica.relative_to(run_dir) / p) for p in ("reports", "metrics", "data/manifest.json")]
    if with_checkpoints:
        parts.append("checkpoints")
    with tarfile.open(out, "w:gz") as tar:
        for part in parts:
            p = run_dir / part
            if p.exists():
                tar.add(p, arcname=f"{run_dir.name}/{part}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.book.share")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a_ = sub.add_parser("archive")
    a_.add_argument("--run", default="default")
    a_.add_argument("--output-root", default=str(PROJECT_ROOT / "outputs"))
    a_.add_argument("--with-checkpoints", action="store_true")
    a = ap.parse_args(argv)
    if not is_plain_name(a.run):
        print(f"error: --run {a.run!r} refused: {RUN_NAME_RULE}", file=sys.stderr)
        return 2
    try:
        print(archive_run(Path(a.output_root) / a.run, a.with_checkpoints))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
