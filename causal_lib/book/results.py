"""Results of record: a finished run's small outputs committed under results/, with provenance, and README's comparison
table regenerated from them (DESIGN.md s.11).

    python -m causal_lib.book.results save --run default      # -> results/<preset>/<date>-<commit>/
    python -m causal_lib.book.results table --preset default  # the comparison table of the newest saved run
    python -m causal_lib.book.results seeds results/realistic-fair/2026-12-07-d930c20  # a comparison saved per seed
    python -m causal_lib.book.results collect|across ...  # such a comparison's seeds (book.seed_records)

A saved run holds the metrics JSON and the Markdown reports of the main run and of each seed replica (no checkpoints,
no per-item outputs, no data), with every absolute path of the checkout removed, and provenance.json: the commit the
run's code was at (and whether the tree had uncommitted changes), params file and hash, seeds, the machine (CPU model,
cores, native bf16), versions, each chapter run's status, wall time and peak memory, and the book's wall time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

from causal_lib.book import seed_records
from causal_lib.core.run_folder import SEEDS_DIR, write_json, write_text_atomic
from causal_lib.config import PROJECT_ROOT, RUN_NAME_RULE, is_plain_name

RESULTS_DIR = PROJECT_ROOT / "results"
MAX_FILE_BYTES = 2 * 1024 * 1024  # a metrics file larger than this is per-item data, not a result of record
SKIP = re.compile(r"_items\.jsonl$|\.jsonl$")


class ResultsError(RuntimeError):
    """A run that cannot be saved as a result of record; the message says why and what to do."""


def _git(*args: str, root: Path = PROJECT_ROOT) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_commit() -> str | None:
    """The code's commit (short), marked when tracked files differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    commit = _git("rev-parse", "--short", "HEAD", root=root)
    if not commit:
        return None
    return commit + (" with uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no", root=root) else "")


def machine() -> dict:
    from causal_lib.models.load import cpu_has_native_bf16

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch
    import transformers

    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": cpu_has_native_bf16(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def _portable(text: str, roots: list[str]) -> str:
    for r in sorted(roots, key=len, reverse=True):
        text = text.replace(r + "/", "").replace(r, ".")
    return text


def _copy_small(src_dir: Path, dest_dir: Path, pattern: str, roots: list[str]) -> list[str]:
    out = []
    for f in sorted(src_dir.glob(pattern)):
        if not f.is_file() or f.is_symlink() or SKIP.search(f.name) or f.stat().st_size > MAX_FILE_BYTES:
            continue
        write_text_atomic(dest_dir / f.name, _portable(f.read_text(errors="replace"), roots))
        out.append(f.name)
    return out


def save_run(run_dir: Path, results_root: Path = RESULTS_DIR, commit: str | None = None) -> Path:
    """Copy a run's metrics and reports (main run and seed replicas) to results/<preset>/<date>-<commit>/ with its
    provenance -> that folder."""
    run_dir = Path(run_dir)
    state_path = run_dir / "run.json"
    if not state_path.is_file():
        raise ResultsError(f"{run_dir} is not a run folder (no run.json): run the book first")
    state = json.loads(state_path.read_text())
    chapters = state.get("chapters", {})
    code_root = Path(__file__).resolve().parents[2]
    commit = commit or _git("rev-parse", "HEAD", root=code_root)
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", root=code_root))
    preset = Path(str(state.get("params_file", run_dir.name))).stem
    date = datetime.date.today().isoformat()
    dest = Path(results_root) / preset / f"{date}-{(commit or 'nocommit')[:7]}"
    roots = [str(code_root), str(PROJECT_ROOT), str(run_dir.resolve())]
    files = {"metrics": _copy_small(run_dir / "metrics", dest / "metrics", "*.json", roots),
             "reports": _copy_small(run_dir / "reports", dest / "reports", "*.md", roots)}
    for replica in sorted((run_dir / SEEDS_DIR).glob("seed_*")):
        rel = Path(SEEDS_DIR) / replica.name
        files[str(rel / "metrics")] = _copy_small(replica / "metrics", dest / rel / "metrics", "*.json", roots)
        files[str(rel / "reports")] = _copy_small(replica / "reports", dest / rel / "reports", "*.md", roots)
    config = state.get("config", {})
    provenance = {
        "commit": commit, "uncommitted_changes": dirty, "saved": date, "run": run_dir.name,
        "params_file": state.get("params_file"), "params_hash": state.get("params_hash"),
        "seed": config.get("run", {}).get("seed"), "seeds": config.get("run", {}).get("seeds", []),
        "machine": machine(),
        "book_wall_s": round(sum(c.get("wall_s", 0) for c in chapters.values()), 1),
        "peak_rss_gb": max((c.get("peak_rss_gb", 0) for c in chapters.values()), default=0),
        "complete": bool(chapters) and all(c.get("status") == "ok" for c in chapters.values()),
        "chapters": {k: {"status": c.get("status"), "wall_s": c.get("wall_s"), "peak_rss_gb": c.get("peak_rss_gb"),
                         "finished_at": c.get("finished_at")} for k, c in chapters.items()},
        "files": files,
    }
    write_json(dest / "provenance.json", provenance)
    return dest


def newest(preset: str, results_root: Path = RESULTS_DIR) -> Path:
    runs = sorted(p for p in (Path(results_root) / preset).glob("*-*") if (p / "provenance.json").is_file())
    if not runs:
        raise ResultsError(f"no saved results for {preset!r} under {results_root}: save a run first "
                           f"(python -m causal_lib.book.results save --run NAME)")
    return runs[-1]


def comparison_markdown(folder: Path) -> str:
    """README's comparison table: the saved WEEK4_COMPARISON_TABLE.md's first table, headed by its provenance."""
    prov = json.loads((folder / "provenance.json").read_text())
    table_md = folder / "reports" / "WEEK4_COMPARISON_TABLE.md"
    if not table_md.is_file():
        raise ResultsError(f"{folder} has no reports/WEEK4_COMPARISON_TABLE.md (chapter 08 did not finish)")
    lines = table_md.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    if start is None:
        raise ResultsError(f"{table_md} holds no table")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    m = prov.get("machine", {})
    head = (f"From `{folder.relative_to(folder.parents[1]) if len(folder.parents) > 1 else folder}` "
            f"(commit {str(prov.get('commit'))[:7]}{' + uncommitted changes' if prov.get('uncommitted_changes') else ''}, "
            f"params hash {prov.get('params_hash')}, seed {prov.get('seed')}"
            f"{', seeds ' + str(prov.get('seeds')) if prov.get('seeds') else ''}; {m.get('cpu')}, {m.get('cores')} cores; "
            f"book {prov.get('book_wall_s', 0) / 60:.1f} min{'' if prov.get('complete') else ', incomplete'}):")
    return head + "\n\n" + "\n".join(lines[start:end]) + "\n"


def _pct(r: dict | None) -> str:
    return "" if not r else f"{100 * r['rate']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"


def _corpora_table(seeds: list, models: list) -> str:
    """The field's corpora per model and seed (ASR per attack file, twin-controlled), where any seed has them."""
    cells = {}
    for model in models:
        for s_, p in seeds:
            c = (json.loads((p / "summary.json").read_text()).get(model) or {}).get("corpora")
            if c:
                cells[(model, s_)] = c["asr_by_source"]
    if not cells:
        return ""
    sources = sorted({src for by in cells.values() for src in by if src != "builtin"})
    text = ("\n| model | seed | " + " | ".join(f"{src} ASR" for src in sources) + " |\n|---|---|"
            + "---|" * len(sources) + "\n")
    for (model, s_), by in cells.items():
        text += f"| {model} | {s_} | " + " | ".join(_pct(by.get(src)) or "n/a" for src in sources) + " |\n"
    return text


def seed_tables(folder: Path) -> str:
    """README's tables of a comparison saved seed by seed (`seed_<s>/summary.json`: per model its world summary and
    its realistic summary, null while not evaluated; `across_seeds.json`: the across-seed paired tests, each row
    over the seeds it names): one row per model and seed, then the
    tests, each difference over seeds and items with its interval and Holm p, and each seed's discordant counts."""
    folder = Path(folder)
    seeds = sorted((int(p.name.split("_")[1]), p) for p in folder.glob("seed_*") if (p / "summary.json").is_file())
    if not seeds:
        raise ResultsError(f"{folder} holds no seed_<s>/summary.json")
    head = ("| model | seed | naive | ignore | completion | union | ROUGE-L | SEP realistic | world ASR | world benign |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    models = list(json.loads(seeds[0][1].joinpath("summary.json").read_text()))
    for model in models:
        for s_, p in seeds:
            m = json.loads((p / "summary.json").read_text()).get(model)
            if m is None:
                continue
            real, world = m.get("realistic"), m["world"]
            if real is None:  # a seed whose realistic benchmarks are not evaluated yet: its world columns only
                realistic_cells = " | ".join(["not yet evaluated"] + [""] * 5)
            else:
                proto, u = real["protocol"], real["utility"]
                realistic_cells = (" | ".join(_pct((proto.get(a) or {}).get("starts_with"))
                                              for a in ("naive", "ignore", "completion"))
                                   + f" | {_pct(real['union'])} | {u['rouge_l']:.3f} [{u['lo']:.3f}, {u['hi']:.3f}] | "
                                     f"{_pct(real['sep'])}")
            rows.append(f"| {model} | {s_} | {realistic_cells} | {_pct(world['asr'])} | "
                        f"{_pct(world.get('benign_accuracy'))} |")
    text = head + "\n".join(rows) + "\n"
    text += _corpora_table(seeds, models)
    tests = folder / "across_seeds.json"
    if tests.is_file():
        t = json.loads(tests.read_text())
        text += ("\n| measure | A - B | seeds | items | difference over seeds and items [95%] | Holm p | established "
                 "| per seed (A only / B only) |\n|---|---|---|---|---|---|---|---|\n")
        for r in t["tests"]:
            text += (f"| {r['measure']} | {r['a']} - {r['b']} | {len(r['seeds'])} | {r['n_items']} | "
                     f"{100 * r['difference']:+.1f} pt [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}] | "
                     f"{'not tested (no discordant item)' if r['p_holm'] is None else format(r['p_holm'], '.2g')} | "
                     f"{'yes' if r['significant'] else 'no'} | "
                     + "; ".join(f"{p['seed']}: {p['a_only']}/{p['b_only']}" for p in r["per_seed"]) + " |\n")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m causal_lib.book.results", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="copy a finished run's metrics and reports to results/ with provenance")
    s.add_argument("--run", default="default")
    s.add_argument("--output-root", default=str(PROJECT_ROOT / "outputs"))
    s.add_argument("--results-root", default=str(RESULTS_DIR))
    s.add_argument("--commit", default=None, help="the commit the run's code was at (default: this checkout's HEAD)")
    t = sub.add_parser("table", help="print README's comparison table from the newest saved run of a preset")
    t.add_argument("--preset", default="default")
    t.add_argument("--results-root", default=str(RESULTS_DIR))
    sd = sub.add_parser("seeds", help="print README's per-seed table and across-seed tests of a folder saved seed by "
                                      "seed (seed_<s>/summary.json, across_seeds.json)")
    sd.add_argument("folder")
    c = sub.add_parser("collect", help="write one seed folder's small results (summary.json, training.json) to OUT_DIR")
    c.add_argument("run_folder")
    c.add_argument("out_dir")
    c.add_argument("--models", nargs="+", default=list(seed_records.MODELS))
    x = sub.add_parser("across", help="the across-seed paired tests over seed folders (SEED:RUN_FOLDER ...) -> OUT.json")
    x.add_argument("out")
    x.add_argument("folders", nargs="+", metavar="SEED:RUN_FOLDER")
    x.add_argument("--models", nargs="+", default=list(seed_records.MODELS))
    a = ap.parse_args(argv)
    try:
        if a.cmd == "save":
            if not is_plain_name(a.run):
                raise ResultsError(f"--run {a.run!r} refused: {RUN_NAME_RULE}")
            print(save_run(Path(a.output_root) / a.run, Path(a.results_root), a.commit))
        elif a.cmd == "seeds":
            print(seed_tables(Path(a.folder)), end="")
        elif a.cmd == "collect":
            seed_records.collect(Path(a.run_folder), Path(a.out_dir), a.models)
            print(Path(a.out_dir))
        elif a.cmd == "across":
            try:
                folders = {int(f.split(":", 1)[0]): Path(f.split(":", 1)[1]) for f in a.folders}
            except (ValueError, IndexError):
                raise ResultsError(f"{a.folders}: give each seed folder as SEED:RUN_FOLDER, e.g. 1:outputs/rec/seeds/seed_1")
            result = seed_records.across(folders, a.models)
            write_json(Path(a.out), result)
            print("\n".join(seed_records.test_lines(result)))
        else:
            print(comparison_markdown(newest(a.preset, Path(a.results_root))), end="")
    except (ResultsError, seed_records.SeedRecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
