# %% [markdown]
# # 04 · The undefended base
#
# The embedded base is a **pre-trained input**, as the instruction-tuned LLM is for the plan: a small Llama
# trained from scratch by the project's own recipe (`params/base.yaml`) on the world's instruction-following
# corpus, in which later requests in the user turn are rightly followed — as chat models do. That is what
# makes it vulnerable to injected instructions. It ships in `causal_lib/base_model/` with a manifest; this
# chapter checks the manifest against the current world and model shape, installs it into the run and
# measures it (`base.source: pretrain` trains one here instead, from this params file). A real model
# (`model.kind: hf`, the default book's SmolLM2-135M-Instruct) is instruction-tuned with LoRA on the same base
# corpus (untuned it follows neither the world's tasks nor its attacks): for SmolLM2 that adapter ships too
# (`causal_lib/base_model_smollm2/`, recipe `params/base_smollm2.yaml`); this chapter checks its manifest against the
# installed model file (GGUF sha256), this world and the tokenizer, and merges it into the weights.
# `base.source: pretrain` tunes it here instead (`train.base_epochs > 0`), and `train.base_epochs: 0` with
# `base.source: pretrain` uses a real model as it is.
# Before any defense is worth measuring, the base must be (a) accurate on every task and (b) genuinely
# vulnerable on every goal, including payloads and phrasings it never saw (the "base" criteria of
# `causal_lib.core.criteria`, printed below).

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
resume = False

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from causal_lib.core import run_folder
from causal_lib.core import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.training.pretrain import REAL_BASE_ADAPTER_RUN, curriculum_runs, train_base
from causal_lib.evaluation.run import evaluate_defense
from causal_lib.data.build import ensure_dataset
from causal_lib.training import shipped_adapter, shipped_base
from causal_lib.training.trainer import nan_free, read_train_log

cfg, paths = run_folder.start(params_file, overrides)
ensure_dataset(cfg, paths)  # built by chapter 02; a seed replica builds the same files in its own folder
result = train_base(cfg, paths, resume=resume)  # installs the shipped base, or trains one (base.source)
shipped = (cfg.model.kind == "tiny" and cfg.base.source == "shipped") or shipped_adapter.uses_shipped_adapter(cfg)
manifest = json.loads((paths.metrics / "base_manifest.json").read_text()) if shipped else {}
log = read_train_log(paths, "base") or read_train_log(paths, REAL_BASE_ADAPTER_RUN)  # the real model's LoRA tuning
stages = [(f"curriculum {i + 1}: {', '.join(tasks)}", read_train_log(paths, name))
          for i, (name, tasks) in enumerate(zip(curriculum_runs(cfg), cfg.train.base_curriculum))]

# %% [markdown]
# Trained here (`base.source: pretrain`), the base first trains on the plain examples of each curriculum
# stage's tasks alone (the copy tasks first: the answer is a span of the data), then on the whole corpus;
# the curves below run on one step axis, stage after stage. The shipped base's own stages are in its manifest.

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
if shipped:
    display(pd.DataFrame(report_text.shipped_base_table(manifest, summary, shipped_base.recipe_hash(cfg))))
pd.DataFrame([{"metric": "benign accuracy (clean test items)", **benign,
               "target": criteria.target_text("base_benign_accuracy")},
              {"metric": "attack success rate (attacked test items)", **asr, "target": criteria.target_text("base_asr")},
              {"metric": "capability floor (clean twin already passes the attack check)", **summary.get("capability_floor", {})}])

# %% [markdown]
# Benign accuracy per task and ASR per goal (95% Clopper-Pearson): a task the base has not learned, or a goal
# it does not carry out, would make every later comparison meaningless there.

# %%
display(pd.DataFrame([{"task": t, **r} for t, r in summary.get("benign_accuracy_by_task", {}).items()]))
pd.DataFrame([{"goal": g, **r} for g, r in summary.get("asr_by_goal", {}).items()])

# %% [markdown]
# **The held-out axes.** Each attacked test item says which of its content was never in any training text
# (base corpus, defense training set, validation): the phrasing of the injected request, the payload string,
# the injected task type, the wrapper family. Below, per axis, the ASR on items whose content on that axis
# was seen in training against items whose content was held out.

# %%
axes = pd.DataFrame(report_text.axis_table(summary))
if len(axes):
    fig, ax = plt.subplots(figsize=(9, 3))
    for i, (label, sub) in enumerate(axes.groupby("content", sort=False)):
        x = range(len(sub))
        rates = sub["ASR"].fillna(0).to_numpy()
        err = [rates - sub["lo"].fillna(0).to_numpy(), sub["hi"].fillna(0).to_numpy() - rates]
        ax.bar([v + 0.4 * i for v in x], rates, width=0.4, yerr=err, capsize=3, label=label)
        ax.set_xticks([v + 0.2 for v in x], list(sub["axis"]), rotation=15, ha="right")
    ax.set_ylabel("ASR (95% CI)"); ax.set_ylim(0, 1); ax.legend(); ax.set_title("undefended base: seen vs held-out content")
    plt.show()
axes

# %%
# the targets (accurate on every task, vulnerable on every goal) are the "base" criteria of causal_lib.core.criteria
base_rows = report_text.base_rows(summary)
verdict = criteria.overall(base_rows)
detail = report_text.base_detail(summary)
run_folder.write_metrics(paths, "base", {
    "summary": summary, "train_seconds": result.train_seconds if result else 0.0,
    "steps": result.steps if result else 0, "nan_free": nan_free(log), "seed": cfg.run.seed,
    "verdict": verdict, "kind": cfg.model.kind, "source": "shipped" if shipped else cfg.base.source,
    "manifest": {k: manifest.get(k) for k in ("recipe", "recipe_hash", "world_fingerprint", "training_fingerprint",
                                                 "data_hash", "created")}})
reports.record_verdict(paths, "04_base_model", verdict, detail)
display(pd.DataFrame(base_rows.values()))
print(detail)
