# %% [markdown]
# # 04 · The undefended base
#
# The embedded default pre-trains a small Llama from scratch on the world's instruction-following corpus,
# in which later requests in the user turn are rightly followed — as chat models do. That is what makes
# it vulnerable to injected instructions. A real model (`model.kind: hf`) is used as it is.
# Before any defense is worth measuring, the base must be (a) accurate on clean items and (b) genuinely
# vulnerable: high benign accuracy and a high attack success rate on the test attacks (the "base"
# criteria of `causal_lib.book.criteria`, printed below).

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
resume = False

# %%
import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.book import run_folder
from causal_lib.book import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.training.pretrain import curriculum_runs, train_base
from causal_lib.evaluation.run import evaluate_defense
from causal_lib.data.build import ensure_dataset
from causal_lib.training.trainer import nan_free, read_train_log

cfg, paths = run_folder.start(params_file, overrides)
ensure_dataset(cfg, paths)  # built by chapter 02; a seed replica builds the same files in its own folder
result = train_base(cfg, paths, resume=resume)
log = read_train_log(paths, "base")
stages = [(f"curriculum {i + 1}: {', '.join(tasks)}", read_train_log(paths, name))
          for i, (name, tasks) in enumerate(zip(curriculum_runs(cfg), cfg.train.base_curriculum))]

# %% [markdown]
# With a curriculum (`train.base_curriculum`, `train.base_curriculum_epochs`) the base first trains on the
# plain examples of each stage's tasks alone (the copy tasks first: the answer is a token of the data), then
# on the whole corpus; the curves below run on one step axis, stage after stage.

# %%
if log:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3))
    shift = 0
    for name, rows in stages + [("whole corpus", log)]:
        df = pd.DataFrame([r for r in rows if "loss" in r])
        if len(df):
            ax[0].plot(df["step"] + shift, df["loss"], label=name)
            ax[1].plot(df["step"] + shift, df["rss_gb"], label=name)
        shift += max((r["step"] for r in rows), default=0)
    ax[0].set_yscale("log"); ax[0].set_title("base pre-training loss"); ax[0].set_xlabel("step"); ax[0].legend()
    ax[1].set_title("resident memory (GB)"); ax[1].set_xlabel("step")
    plt.show()

# %%
evaluation = evaluate_defense(cfg, paths, "none")
summary = evaluation["summary"]
benign, asr = summary["benign_accuracy"], summary["asr"]
pd.DataFrame([{"metric": "benign accuracy (clean test items)", **benign,
               "target": criteria.target_text("base_benign_accuracy")},
              {"metric": "attack success rate (attacked test items)", **asr, "target": criteria.target_text("base_asr")},
              {"metric": "ASR, held-out families", **summary["asr_by_split"].get("held_out", {})}])

# %% [markdown]
# Benign accuracy per task (95% Clopper-Pearson): which of the world's tasks the base has not learned.

# %%
pd.DataFrame([{"task": t, **r} for t, r in summary.get("benign_accuracy_by_task", {}).items()])

# %%
# the targets (accurate yet vulnerable) are the "base" criteria of causal_lib.book.criteria
base_rows = {"base_benign_accuracy": criteria.row("base_benign_accuracy", benign), "base_asr": criteria.row("base_asr", asr)}
verdict = criteria.overall(base_rows)
detail = report_text.base_detail(benign, asr)
run_folder.write_metrics(paths, "base", {
    "summary": summary, "train_seconds": result.train_seconds if result else 0.0,
    "steps": result.steps if result else 0, "nan_free": nan_free(log), "seed": cfg.run.seed,
    "verdict": verdict, "kind": cfg.model.kind})
reports.record_verdict(paths, "04_base_model", verdict, detail)
print(detail)
