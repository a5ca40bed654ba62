# %% [markdown]
# # 05 · Training one defense
#
# One papermill run per defense (`defense` parameter): `causal` fine-tunes the base with
# L = L_task + λ_causal·L_causal + λ_spurious·L_spurious (DESIGN.md §3) on counterfactual pairs;
# `struq` and `secalign` train the published baselines on the same base and the same examples (the training
# contract: the causal method's pairs, the same steps; `struq_original` / `secalign_original` are their published
# 2-family recipes), `causal_sft` is adversarial SFT on those pairs, the control. Curves of every loss, the
# validation score per epoch, memory and speed; checkpoints per epoch under `checkpoints/<defense>/epoch_N`,
# `best_model` chosen by one rule for every defense: the lowest validation loss on O* (`training.selection`).
# With several processes in `run.num_processes` the defense trains on that many local processes with DDP
# (`book.train`, README "More than one machine"): the same objective on the same global batch.
# Writes this defense's section of `WEEK2_TRAINING_REPORT.md`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
defense = "causal"
resume = False

# %%
import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.core import run_folder
from causal_lib.core import criteria
from causal_lib.book import train
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.book.chapters import chapter_label
from causal_lib.defenses import registry
from causal_lib.training.trainer import nan_free, read_train_log, steps_per_second

# over train.learning_rate_grid when set; on run.num_processes local processes when more than one
cfg, paths, result = train.train_defense(params_file, overrides, defense, resume=resume)
log = read_train_log(paths, defense)
df = pd.DataFrame([r for r in log if any(k.startswith("loss") for k in r)])
print(f"{registry.label(defense)}: {result.steps} steps in {result.train_seconds:.0f} s; best epoch {result.best_epoch}")

# %%
loss_cols = [c for c in df.columns if c.startswith("loss") or c.endswith("loss")]
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
for c in loss_cols:
    axes[0].plot(df["step"], df[c], label=c)
axes[0].set_title(f"{registry.label(defense)}: losses"); axes[0].set_xlabel("step"); axes[0].legend(fontsize=7)
axes[1].plot(df["step"], df["rss_gb"], label="RSS")
if "cuda_peak_gb" in df:
    axes[1].plot(df["step"], df["cuda_peak_gb"], label="CUDA peak")
axes[1].axhline(cfg.run.memory_limit_gb, color="red", ls="--", label="limit"); axes[1].set_title("memory (GB)")
axes[1].legend(fontsize=7)
if "steps_per_s" in df:
    axes[2].plot(df["step"], df["steps_per_s"]); axes[2].set_title("steps / s")
plt.tight_layout(); plt.show()

# %%
epochs = pd.DataFrame([{"epoch": e, **s} for e, s in sorted(result.epochs.items())])
if "val_loss" in epochs:  # the epoch score of the training contract's rule (training.selection), every defense
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(epochs["epoch"], epochs["val_loss"], marker="o", label="selection: validation loss on O*")
    ax.set_xlabel("epoch"); ax.set_title(f"best epoch = {result.best_epoch}"); ax.legend(fontsize=7); plt.show()
epochs

# %%
sps = steps_per_second(log)
metrics = {"defense": defense, "steps": result.steps, "train_seconds": result.train_seconds,
           "best_epoch": result.best_epoch, "epochs": {str(k): v for k, v in result.epochs.items()},
           "nan_free": nan_free(log), "steps_per_s": sps, "peak_rss_gb": float(df["rss_gb"].max()) if len(df) else None,
           "final_losses": {c: float(df[c].iloc[-1]) for c in loss_cols} if len(df) else {}, "seed": cfg.run.seed}
run_folder.write_metrics(paths, f"train_{defense}", metrics)
rows = [{"epoch": e, **s} for e, s in sorted(result.epochs.items())]
reports.write_report_section(paths, "WEEK2_TRAINING_REPORT.md", defense,
                             report_text.training_section(registry.label(defense), metrics, rows), title="Week 2 training report")
reports.record_verdict(paths, chapter_label("05_train", defense), criteria.judge("nan_free", metrics["nan_free"]),
                       report_text.training_detail(metrics))
