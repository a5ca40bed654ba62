# %% [markdown]
# # 06 · Epoch validation
#
# Every epoch checkpoint of one defense, scored on the validation split with the plan's metrics:
# causal stability and ε_causal on validation pairs, benign accuracy and attack success on validation
# items (seen and held-out families), and the train/validation loss gap. `best_model` is the epoch of the
# training contract's rule, the same for every defense and the one training used: the lowest validation loss on O*
# over clean and injected items (`training.selection`); a disagreement is reported. Causal stability is shown, not
# used: it is the quantity the causal loss optimises.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
defense = "causal"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.core import run_folder
from causal_lib.core import criteria
from causal_lib.book import reports
from causal_lib.book import report_text
from causal_lib.book.chapters import chapter_label
from causal_lib.evaluation.epoch_selection import validate_epochs

cfg, paths = run_folder.start(params_file, overrides)
table = validate_epochs(cfg, paths, defense)
df = pd.DataFrame(table["epochs"])
df

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.3))
axes[0].errorbar(df["epoch"], df["causal_stability"], yerr=[df["causal_stability"] - df["causal_stability_lo"],
                 df["causal_stability_hi"] - df["causal_stability"]], marker="o", capsize=3)
axes[0].axhline(criteria.threshold("causal_stability"), color="green", ls="--", label="target")
axes[0].set_title("causal stability (val; optimised by the causal loss)")
axes[1].errorbar(df["epoch"], df["asr"], yerr=[df["asr"] - df["asr_lo"], df["asr_hi"] - df["asr"]], marker="o",
                 capsize=3, label="ASR")
axes[1].errorbar(df["epoch"], df["benign_accuracy"], yerr=[df["benign_accuracy"] - df["benign_accuracy_lo"],
                 df["benign_accuracy_hi"] - df["benign_accuracy"]], marker="s", capsize=3, label="benign accuracy")
axes[1].set_ylim(-0.02, 1.02); axes[1].legend(); axes[1].set_title("validation rates (95% CI)")
axes[2].plot(df["epoch"], df["train_loss"], marker="o", label="train (clean)")
axes[2].plot(df["epoch"], df["val_loss"], marker="s", label="val (clean)")
axes[2].plot(df["epoch"], df["selection_loss"], marker="^", label="selection rule (val, clean + injected)")
axes[2].legend(fontsize=7); axes[2].set_title("L_task: train vs val")
for a in axes:
    a.set_xlabel("epoch")
plt.tight_layout(); plt.show()

# %%
run_folder.write_metrics(paths, f"epochs_{defense}", {**table, "seed": cfg.run.seed})
# best_model is (re)set to the epoch picked here; the chapter fails when that epoch overfits: its clean
# validation loss above its training loss by more than the "overfit_gap" criterion allows, or not finite
reports.record_verdict(paths, chapter_label("06_epoch_validation", defense),
                       criteria.judge("overfit_gap", table["gap_at_best"]), report_text.epoch_detail(table))
