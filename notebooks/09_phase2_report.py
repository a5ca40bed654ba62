# %% [markdown]
# # 09 · Phase 2 report
#
# The plan's success criteria — must-achieve metrics, targets and quality indicators (training time,
# memory, no NaN, validation improving) — as a table of measured value, target and PASS/FAIL, read from the
# metrics JSON the earlier chapters wrote. Then the failure cases, with examples, and the two closing
# reports: `PHASE2_COMPLETION_REPORT.md` and `PROJECT_STATUS.md`.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.book import run_folder as chapter
from causal_lib.book import reports
from causal_lib.book.phase_report import failure_cases, success_criteria

cfg, paths = chapter.start(params_file, overrides)
criteria = success_criteria(paths, memory_limit_gb=cfg.run.memory_limit_gb)
CRITERIA_COLUMNS = ["kind", "criterion", "measured", "target", "status"]
table = pd.DataFrame(criteria)[CRITERIA_COLUMNS]
table

# %%
chapters = json.loads((paths.metrics / "chapters.json").read_text()) if (paths.metrics / "chapters.json").exists() else {}
if chapters:
    ch = pd.DataFrame([{"chapter": k, **v} for k, v in chapters.items()])
    fig, axes = plt.subplots(1, 2, figsize=(14, 3.5))
    axes[0].barh(ch["chapter"], ch["wall_s"] / 60); axes[0].set_xlabel("minutes"); axes[0].set_title("wall time per chapter")
    axes[1].barh(ch["chapter"], ch["peak_rss_gb"]); axes[1].axvline(cfg.run.memory_limit_gb, color="red", ls="--")
    axes[1].set_xlabel("GB"); axes[1].set_title("peak resident memory per chapter")
    plt.tight_layout(); plt.show()

# %% [markdown]
# ## Failure cases

# %%
failures = failure_cases(paths)
for name, rows in failures.items():
    print(f"\n{name}: {len(rows)} example(s)")
    for r in rows:
        print("  ", r)

# %%
n_pass = sum(r["status"] == "PASS" for r in criteria)
must_ok = all(r["status"] == "PASS" for r in criteria if r["kind"] == "must")
status = "COMPLETE" if n_pass == len(criteria) else ("MUST-ACHIEVE MET" if must_ok else "NOT MET")
chapter.write_metrics(paths, "phase2", {"criteria": criteria, "failures": failures, "status": status, "seed": cfg.run.seed})
md_fail = "".join(f"\n### {k.replace('_', ' ')}\n\n" + (reports.markdown_table(v) if v else "_none_\n") for k, v in failures.items())
reports.write_report(paths, "PHASE2_COMPLETION_REPORT.md",
    f"# Phase 2 completion report\n\nRun `{paths.root.name}`, params hash {cfg.params_hash()}, seed {cfg.run.seed}. "
    f"Every value below is read from `metrics/*.json` written by this run.\n\n**Status: {status}** "
    f"({n_pass}/{len(criteria)} criteria pass)\n\n" + reports.markdown_table(criteria, CRITERIA_COLUMNS)
    + "\n## Failure cases\n" + md_fail)
reports.write_report(paths, "PROJECT_STATUS.md",
    f"# Project status\n\nPhase 2 on run `{paths.root.name}` (seed {cfg.run.seed}, params hash {cfg.params_hash()}): "
    f"**{status}**, {n_pass}/{len(criteria)} criteria pass.\n\n"
    + "".join(f"- {r['status']}: {r['criterion']} — {r['measured']} (target {r['target']})\n" for r in criteria)
    + "\nChapters: " + ", ".join(f"{k} {v.get('status')} ({v.get('wall_s', 0):.0f} s)" for k, v in chapters.items()) + "\n")
reports.record_verdict(paths, "09_phase2_report", status, f"{n_pass}/{len(criteria)} criteria pass")
print(status, f"{n_pass}/{len(criteria)}")
