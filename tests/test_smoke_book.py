"""The whole book on params/smoke.yaml, as a user runs it: every chapter executes, renders, reports
measured numbers, and the same params and seed give the same metrics (DESIGN.md s.9). The first book runs as
`python -m causal_lib.book run` in a subprocess, into a run folder inside the project's outputs/, with its
console captured line by line with the time each line came."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from causal_lib.core.run_folder import without_machine_measurements
from causal_lib.book.chapters import chapter_runs
from causal_lib.book.runner import run_book
from causal_lib.book.share import archive_run
from causal_lib.config import PROJECT_ROOT, load_config
from causal_lib.defenses import registry

pytestmark = pytest.mark.slow

REPORTS = ["WEEK1_SETUP_REPORT.md", "WEEK1_DATASET_REPORT.md", "WEEK2_TRAINING_REPORT.md",
           "WEEK3_VERIFICATION_REPORT.md", "WEEK4_EVALUATION_REPORT.md", "WEEK4_COMPARISON_TABLE.md",
           "PHASE2_COMPLETION_REPORT.md", "PROJECT_STATUS.md"]


# Secrets a user may have in the environment: none may reach a log, notebook, report or metrics file.
SECRETS = {"WANDB_API_KEY": "wandb-key-3f9c2e71d0", "HF_TOKEN": "hf_token3f9c2e71d0", "HUGGING_FACE_HUB_TOKEN": "hf_hub3f9c2e71d0"}


@pytest.fixture(scope="module")
def smoke():
    # inside the project (outputs/test-*, `make clean` removes leftovers): the checkout's path is what must
    # not appear in the outputs, and the book writes there as it does for a user
    out_root = f"outputs/test-smoke-{os.getpid()}"
    shutil.rmtree(PROJECT_ROOT / out_root, ignore_errors=True)
    overrides = {"run.output_root": out_root}
    env = {**os.environ, **SECRETS, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "causal_lib.book", "run", "--params", "params/smoke.yaml",
                             "--set", f"run.output_root={out_root}"], cwd=str(PROJECT_ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    console = [(time.monotonic() - t0, line.rstrip("\n")) for line in proc.stdout]
    proc.wait()
    t_end = time.monotonic() - t0
    root = PROJECT_ROOT / out_root / "smoke"
    text = "\n".join(line for _, line in console)
    assert proc.returncode == 0, text
    state = json.loads((root / "run.json").read_text())
    cfg = load_config("params/smoke.yaml", overrides)
    yield {"root": root, "state": state, "cfg": cfg, "overrides": overrides, "console": console, "t_end": t_end}
    shutil.rmtree(PROJECT_ROOT / out_root, ignore_errors=True)


def test_console_shows_a_line_at_least_every_30_s(smoke):
    times = [0.0] + [t for t, _ in smoke["console"]] + [smoke["t_end"]]
    gaps = [(b - a, smoke["console"][i - 1][1] if i else "(start)") for i, (a, b) in enumerate(zip(times, times[1:]))]
    longest = max(gaps)
    print(f"longest console gap: {longest[0]:.1f} s after {longest[1]!r}; book {smoke['t_end']:.0f} s, "
          f"{len(smoke['console'])} lines")
    assert longest[0] <= 30, longest
    text = "\n".join(line for _, line in smoke["console"])
    assert "still running" in text or "step" in text  # progress shows while chapters run


def test_console_is_free_of_noise(smoke):
    text = "\n".join(line for _, line in smoke["console"])
    for noise in ("eavesdropping", "IPKernelApp", "Passed unknown parameter", "Traceback", "Loading weights"):
        assert noise not in text, noise
    for page in (smoke["root"] / "html").glob("*.html"):
        assert "Loading weights" not in page.read_text(), page.name  # no progress-bar debris in the reports


def test_no_output_nor_the_archive_holds_the_checkouts_path(smoke, tmp_path):
    needle = str(PROJECT_ROOT).encode()
    found = [str(f.relative_to(smoke["root"])) for f in smoke["root"].rglob("*")
             if f.is_file() and needle in f.read_bytes()]
    assert not found, found  # grep -r <project root> outputs/<run> finds nothing
    archive = archive_run(smoke["root"], with_checkpoints=True, out=tmp_path / "smoke.tar.gz")
    with tarfile.open(archive) as tar:
        leaked = [m.name for m in tar.getmembers() if m.isfile() and needle in tar.extractfile(m).read()]
    assert not leaked, leaked


def _cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


def test_every_chapter_ran_ok_and_was_measured(smoke):
    labels = [r.label for r in chapter_runs(smoke["cfg"])]
    chapters = smoke["state"]["chapters"]  # run.json keeps its keys sorted: the order is read from the console
    assert sorted(chapters) == sorted(labels)
    started = [m.group(1) for _, line in smoke["console"] if (m := re.match(r"\[\d+/\d+\] (\S+) \.\.\.", line))]
    assert started == labels  # every chapter run, in the book's order
    for label, rec in chapters.items():
        assert rec["status"] == "ok", (label, rec)
        assert rec["wall_s"] > 0 and 0 < rec["peak_rss_gb"] < 5.5


def test_executed_notebooks_have_no_errors_and_end_in_a_verdict(smoke):
    for nb in sorted((smoke["root"] / "notebooks").glob("*.ipynb")):
        outputs = [o for c in _cells(nb) for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"], nb.name
        text = "".join("".join(o.get("text", "")) for o in outputs)
        assert re.search(r"VERDICT \S+: \w+", text), nb.name


def test_html_reports_have_inline_plots_and_index_links_every_chapter(smoke):
    html = smoke["root"] / "html"
    pages = sorted(html.glob("0*.html"))
    assert len(pages) == len(smoke["state"]["chapters"])
    with_plots = [p.name for p in pages if "data:image/png;base64" in p.read_text()]
    assert len(with_plots) >= 6, with_plots
    index = (html / "index.html").read_text()
    for p in pages:
        assert p.name in index


def test_reports_exist_and_carry_measured_numbers_with_intervals(smoke):
    reports = smoke["root"] / "reports"
    for name in REPORTS:
        text = (reports / name).read_text()
        assert len(text) > 200 and re.search(r"\d", text), name
    table = (reports / "WEEK4_COMPARISON_TABLE.md").read_text()
    for name in registry.evaluated(smoke["cfg"].train.defenses):  # every defense the run trains or wraps
        assert registry.label(name) in table
    assert "exact McNemar" in table and "Holm" in table  # differences only from paired tests
    assert "capability floor" in table
    assert "[" in table and "%" in table  # rates with their 95% intervals
    assert "literature" in table.lower()  # reference numbers are labelled as such


def test_comparison_is_measured_on_one_test_set_with_held_out_split(smoke):
    metrics = smoke["root"] / "metrics"
    summaries = {d: json.loads((metrics / f"eval_{d}.json").read_text())["summary"]
                 for d in ("none", "filter", "struq", "secalign", "causal")}
    ns = {d: s["asr"]["n"] for d, s in summaries.items()}
    assert len(set(ns.values())) == 1 and ns["causal"] > 0, ns
    for s in summaries.values():
        assert {"seen", "held_out"} <= set(s["asr_by_split"])
        assert s["asr"]["lo"] <= s["asr"]["rate"] <= s["asr"]["hi"]


def test_verification_shows_power_next_to_every_independence_test(smoke):
    ver = json.loads((smoke["root"] / "metrics" / "verification.json").read_text())
    models = ver["models"]
    assert {"none", "causal"} <= set(models), "chapter 07 verifies the base and every trained defense"
    ns = {k: m["hsic"]["injected"]["n"] for k, m in models.items()}
    assert len(set(ns.values())) == 1, ns  # the same pairs for every model
    for m in models.values():
        assert set(m["hsic"]) == {"injected", "benign", "null control", "planted control"}
        assert m["hsic"]["planted control"]["n"] == m["hsic"]["injected"]["n"]
        eq = m["equivalence"]  # the trained point: reported, not judged (the loss optimised it; it has no margin)
        assert eq["lo"] <= eq["value"] <= eq["hi"] and eq["verdict"] == "not judged"
        # the untrained points with a margin chosen on validation pairs are judged
        judged = [p["equivalence"] for p in m["points"].values() if not p["optimised"] and p["equivalence"]
                  and p["equivalence"]["margin"] is not None]
        assert judged and all(e["verdict"] in ("equivalent", "larger", "inconclusive") for e in judged)
        assert 0 <= m["bounds"]["test_set"]["bound"] <= 1
    assert "base_above_margin" in ver["power_controls"]
    margin = ver["margin"]  # chosen on the validation split's pairs before any test pair
    assert margin["n_pairs"] > 0 and set(margin["margins"]) | set(margin["uninformative"]) == set(margin["base_ratios"])
    cal = ver["calibration"]
    assert 0 <= cal["type1"]["rate"] <= 1 and cal["power"]["n"] > 0


def test_no_secret_from_the_environment_is_written_anywhere(smoke):
    leaked = []
    for f in smoke["root"].rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            leaked += [f"{f.relative_to(smoke['root'])}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    assert not leaked, leaked


def _metrics_view(metrics_dir):
    """Every metrics file of a run, parsed, without the fields that measure the machine (time, memory)."""
    out = {}
    for f in sorted(metrics_dir.iterdir()):
        if f.suffix == ".json":
            obj = json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            obj = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        else:
            continue
        if f.name == "verdicts.json":  # the one-line details quote durations: compare the verdicts themselves
            obj = {k: v["verdict"] for k, v in obj.items()}
        out[f.name] = without_machine_measurements(obj)
    return out


def test_same_params_and_seed_give_the_same_metrics(smoke):
    run_book("params/smoke.yaml", run_name="smoke_again", overrides=smoke["overrides"])
    a, b = smoke["root"], smoke["root"].parent / "smoke_again"
    first, second = _metrics_view(a / "metrics"), _metrics_view(b / "metrics")
    assert first.keys() == second.keys()
    assert len(first) >= 20 and {"comparison.json", "verification.json", "eval_causal_items.jsonl"} <= first.keys()
    for name in first:
        assert first[name] == second[name], f"metrics/{name} differs between two runs of the same params and seed"
    for split in ("train", "test", "base_corpus"):
        assert (a / "data" / f"{split}.jsonl").read_bytes() == (b / "data" / f"{split}.jsonl").read_bytes()
    for report in REPORTS:  # the seed is recorded in every report
        assert re.search(r"seed\W{0,3}0\b", (a / "reports" / report).read_text(), re.I), report
