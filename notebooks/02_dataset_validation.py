# %% [markdown]
# # 02 · Dataset validation
#
# Builds (or reuses) the run's data - the base-training corpus, the training pairs, validation and test -
# and checks it before any model sees it, because every later number is only as good as the data:
#
# 1. **Loading test**: every file loads and validates against the record schema, matches the manifest's
#    sha256, and the loader names file and line of a corrupt record.
# 2. **Counterfactual analysis**: a clean item and its injected twin share S, D and O* and differ only in
#    the injected text Z (removing Z from U gives D back); length distributions of both sides.
# 3. **Attack diversity and held-out content**: counts per family, goal and position; distinct templates;
#    the share of held-out families in test; and the contamination check: no test-only content on any
#    held-out axis (injected-instruction phrasings, the held-out task's requests, payload and witness
#    strings, wrapper templates, documents) in any training text - base corpus, defense training set or
#    validation - matched as word n-grams and naming the offending strings (it fails on a planted overlap:
#    tests/test_heldout_content.py).
#
# Verdict: **EXCELLENT** (every check passes), **ACCEPTABLE** (the hard checks pass, some coverage is
# thin), **NOT READY** (a hard check fails). Writes `reports/WEEK1_DATASET_REPORT.md` and
# `metrics/dataset.json`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display

from causal_lib.core import run_folder
from causal_lib.data import build
from causal_lib.data import records
from causal_lib.data import checks
from causal_lib.data import world
from causal_lib.book import reports
from causal_lib.book import report_text

cfg, paths = run_folder.start(params_file, overrides)
manifest = build.ensure_dataset(cfg, paths)
print(f"data in {paths.data}: {'built' if manifest['built'] else 'reused'} ({manifest['reason']}), "
      f"{manifest['seconds']:.1f} s, data hash {manifest['data_hash']}")
splits = records.load_dataset(paths.data)
report = checks.validate_dataset(paths.data, cfg.data.held_out_families)
rows = pd.DataFrame([r for recs in splits.values() for r in checks.length_table(recs)])
rows["file"] = [name for name, recs in splits.items() for _ in recs]

# %% [markdown]
# ## 1. Loading test

# %%
files = pd.DataFrame([{"file": f"{k}.jsonl", **{kk: vv for kk, vv in v.items() if kk != "kinds"},
                       **v.get("kinds", {})} for k, v in report["files"].items()]).fillna(0)
print("corrupt-record test:", report["loader_rejects_corrupt"]["message"])
files

# %% [markdown]
# ## 2. Counterfactual analysis
# One pair of each goal from the test split: S, D and O* are shared; only Z is added to U.

# %%
test = splits["test"]
twins = {r.pair_id: r for r in test if r.kind == "clean"}
shown = {}
for r in test:
    if r.kind == "injected" and r.goal not in shown and r.source == "builtin":
        shown[r.goal] = {"goal": r.goal, "family": r.family, "position": r.position, "S": r.system,
                         "U (injected)": r.data, "O*": r.target, "O_inj": r.injected_target,
                         "clean U == D": twins[r.pair_id].data == r.clean_data}
print(f"pairs per split: {report['pairs']}; invariant violations: {report['pair_violations']['count']}")
pd.DataFrame(list(shown.values()))

# %%
pairs = rows[rows.kind.isin(["clean", "injected"])]
fig, ax = plt.subplots(1, 3, figsize=(15, 3.5))
sns.histplot(pairs, x="data_words", hue="kind", element="step", stat="density", common_norm=False, ax=ax[0])
ax[0].set_title("words in U: clean vs injected")
sns.boxplot(rows[rows.kind == "injected"], x="injection_words", y="family", ax=ax[1])
ax[1].set_title("words in Z by family")
sns.histplot(rows, x="total_words", hue="file", element="step", stat="density", common_norm=False, ax=ax[2])
ax[2].set_title("S + U + target words by file")
plt.tight_layout()
plt.show()
pd.DataFrame(report["lengths"]).T

# %% [markdown]
# ## 3. Attack diversity

# %%
inj = rows[(rows.kind == "injected")]
fig, ax = plt.subplots(1, 3, figsize=(16, 4))
share = lambda df, col: df.groupby([col, "file"]).size().unstack(fill_value=0).pipe(lambda t: t / t.sum())  # noqa: E731
share(inj, "family").plot.barh(ax=ax[0]); ax[0].set_title("share of a file's attacks per family")
t = inj[inj.file == "test"]
sns.heatmap(pd.crosstab(t.goal, t.position), annot=True, fmt="d", cmap="Blues", ax=ax[1])
ax[1].set_title("test: goal x position")
share(rows[rows.kind == "clean"], "task").plot.barh(ax=ax[2]); ax[2].set_title("share of a file's clean items per task")
plt.tight_layout()
plt.show()
div = report["diversity"]
print(f"distinct templates: {div['distinct_templates']}; held-out share of built-in test attacks: "
      f"{div['test']['held_out_share']:.0%}; sources: {div['test']['by_source']}")
pd.DataFrame({"test items": div["test"]["by_family"], "templates (test)": div["test"]["templates_per_family"],
              "train items": div["train"]["by_family"]}).fillna(0).astype(int)

# %%
con = report["contamination"]
print(report_text.contamination_line(con))
print("documents shared between files:", report["document_overlap"])
test_inj = [r for r in splits["test"] if r.kind == "injected" and r.source == "builtin"]
display(pd.DataFrame([{"axis": a, "test attacks with held-out content": sum(a in (r.novel or "").split(",") for r in test_inj)}
                      for a in world.CONTENT_AXES]
                     + [{"axis": "family", "test attacks with held-out content": sum(r.held_out for r in test_inj)}]))
pd.DataFrame(con["hits"]) if con["hits"] else "no contamination"

# %% [markdown]
# Near-copies the 4-gram check lets through: a held-out phrase sharing a content 3-gram ("the closing entry")
# with a training text, or at least half its content words (content-word Jaccard; threshold in causal_lib.data.checks). Reported, a soft check.

# %%
overlap = report["content_overlap"]
print(checks.content_overlap_summary(overlap))
pd.DataFrame(overlap["flags"])[["axis", "id", "text", "training_id", "training_text", "why"]] if overlap["flags"] else "no near-overlap"

# %% [markdown]
# ## Verdict

# %%
check_table = pd.DataFrame(report["checks"])
check_table["status"] = [reports.pass_fail(ok) for ok in check_table.ok]
verdict, reasons = report["verdict"], report["reasons"]
md = report_text.dataset_report(cfg.run.name, cfg.run.seed, manifest, report, files.to_dict("records"),
                                cfg.data.held_out_families)
reports.write_report(paths, "WEEK1_DATASET_REPORT.md", md)
run_folder.write_metrics(paths, "dataset", {
    "verdict": verdict, "reasons": reasons, "checks": report["checks"], "seed": cfg.run.seed,
    "data_hash": manifest["data_hash"], "files": report["files"], "pairs": report["pairs"],
    "lengths": report["lengths"], "diversity": div, "contamination": con,
    "document_overlap": report["document_overlap"], "content_overlap": report["content_overlap"],
    "build_seconds": manifest["seconds"]})
reports.record_verdict(paths, "02_dataset_validation", verdict, "; ".join(reasons))
print(f"VERDICT: {verdict}\n  " + "\n  ".join(reasons))
check_table[["check", "status", "hard", "value"]]

# %%
if verdict == "NOT READY":
    raise RuntimeError("dataset NOT READY: " + "; ".join(reasons)
                       + " - rebuild with data.ensure_dataset(cfg, paths, force=True) or fix the generator")
