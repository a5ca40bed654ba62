# %% [markdown]
# # 07 · Causal verification that can fail, for every model
#
# Does the injected instruction Z still reach the model's representation R, and through it the output? This
# chapter asks it of the undefended base and of every trained defense, on the same test pairs, with the same
# rules, side by side:
#
# 1. **Calibration** of the HSIC test on synthetic pairs with known truth: type-I error and power at the same n, d.
# 2. **The benign-insertion control** (the criterion). "R ⊥ Z | S" is false for any model that reads its input:
#    any inserted sentence moves R. So each pair gets a third item, its *benign twin*: the injection replaced by
#    neutral sentences of the same length in the same place. An injection should move R no more than that:
#    the distance ratio ‖R(inj) − R(clean)‖ / ‖R(ben) − R(clean)‖ with its 95% interval, held to a margin chosen
#    first at each point of R, on validation pairs with the undefended base (a defense may keep at most half of the
#    base's excess movement there), before any test item is read. The base must be shown above the margin on the test pairs too, or the
#    test has no power. Beside it, a linear probe on
#    the full R for "instruction inserted" and "benign text inserted" (chance 0.5).
# 3. **The plan's HSIC test** R ⊥ Z | S with its n and effect size, for the injection and for the benign
#    insertion, its p-value at growing n, and two controls on each model's real R (labels shuffled within pairs:
#    must not reject; plus a planted dependence: must reject).
# 4. **ε_causal** with its tail, **causal stability**, **SEP** and **ASR** per model.
# 5. **Bounds**: a valid test-set bound on the injected-input error for every model; a PAC-Bayes bound with
#    the Monte-Carlo error of its Gibbs risk accounted for, reported as vacuous where it is, with the cause.
# 6. **Causal discovery** over S, D, Z, R, O on the full R, the expected graph corrected for the world's S-D
#    dependence, with bootstrap edge stability.

# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
model_name = "causal"  # the model the chapter's verdict is about; every model is verified

# %%
import matplotlib.pyplot as plt
import pandas as pd

from causal_lib.book import report_text, reports
from causal_lib.book.results import code_commit

from causal_lib.core import criteria, run_folder
from causal_lib.data.records import load_split
from causal_lib.defenses.load import load_model
from causal_lib.verification import dseparation, insertion_control, verify_models
from causal_lib.stats.hsic import calibrate, conditional_hsic_test

cfg, paths = run_folder.start(params_file, overrides)
sc = cfg.stats
# the base's weights: the margin's reference and the PAC-Bayes prior below
base_model, base_tokenizer = load_model(cfg, paths, "none")
# the equivalence margins, chosen per point of R on validation pairs with the base before any test item is read: an
# equivalent defense keeps at most half of the base's excess movement there (insertion_control.validation_margin)
margin = verify_models.choose_margin(cfg, paths, base_model, base_tokenizer)
print(report_text.margin_provenance(margin, code_commit()))
pairs = dseparation.test_pairs(load_split(paths.data, "test"), sc.n_independence // 2, cfg.run.seed)
# benign twins as long as the injections in the base's tokens (every model reads the same twins)
benign = [t[2] for t in insertion_control.control_triples(pairs, cfg.run.seed, tokenizer=base_tokenizer)]
defenses = verify_models.models_to_verify(cfg, paths)
print(f"{len(pairs)} test pairs (n = {2 * len(pairs)} rows per test), each with a benign twin; models: {defenses}")
pd.DataFrame([{"injection": pairs[k][1].injection, "benign twin's insertion": benign[k].injection} for k in range(3)])

# %% [markdown]
# ## 1. Calibration of the test at the same n and d

# %%
n_rows, d = 2 * len(pairs), sc.repr_dim
test_fn = lambda R, Z, S, G: conditional_hsic_test(R, Z, S, n_permutations=sc.n_permutations, seed=0, groups=G)
cal = calibrate(test_fn, n=n_rows, d=d, repetitions=sc.calibration_repetitions, alpha=sc.alpha, seed=cfg.run.seed,
                effect=verify_models.PLANTED_STRENGTH, n_classes=len({p[1].family for p in pairs}) + 1,
                n_strata=max(len({p[0].task for p in pairs}), 2), paired=True)
calibration = cal.to_dict()
pd.DataFrame([{"quantity": "type-I error (independent)", **cal.type1.to_dict()},
              {"quantity": f"power (planted dependence, {cal.effect} SD)", **cal.power.to_dict()}])

# %% [markdown]
# ## 2. Every model: the benign-insertion control, the HSIC tests, ε_causal, bounds, discovery

# %%
results = {}
for defense in defenses:
    evaluation = verify_models.outputs_on_pairs(cfg, paths, defense, pairs, full=(defense == model_name))
    results[defense] = verify_models.verify_model(cfg, paths, defense, pairs, benign, evaluation,
                                                  base_model=None if defense == "none" else base_model,
                                                  margins=margin["margins"])
# the base must be shown above the margin where the criterion is judged: the model's worst untrained point
controls = verify_models.power_controls(results, sc.alpha, point=(results[model_name]["worst_untrained"] or {}).get("point"))
table_df = pd.DataFrame(verify_models.summary_rows(results, sc.alpha))
table_df

# %% [markdown]
# ## What the loss did not train: R at other layers and poolings
# The causal loss pulls R at one point (`model.repr_layer`, `model.repr_pooling`: the last layer at the last prompt
# token) of an injected input towards its clean twin, so its numbers at that point (causal stability, the distance
# ratio) cannot speak for the method. The same measurements at three depths x three poolings (last prompt token,
# mean over the prompt, the first response positions teacher-forced along O*), on the same pairs and benign twins;
# the insertion criterion below is judged at the untrained point (with a margin) where the ratio reaches farthest
# past its margin.

# %%
points_df = pd.DataFrame(verify_models.point_rows(results))
points_df

# %%
verify_models.plot_controls(results, alpha=sc.alpha)
plt.show()

# %% [markdown]
# The HSIC tests per model: the injection and the benign insertion as Z, and the two controls on the model's
# real R (shuffled labels: must not reject; planted dependence: must reject).

# %%
hsic_df = pd.DataFrame([{"model": r["model"], "test": k, **{c: v[c] for c in ("n", "d", "effect_size", "p_value", "rejects")}}
                        for r in results.values() for k, v in r["hsic"].items()])
hsic_df

# %% [markdown]
# ## 3. Causal discovery over S, D, Z, R, O (full R)

# %%
verify_models.plot_graphs(results)
plt.show()
pd.DataFrame([{"model": r["model"], "edges": ", ".join(r["discovery"]["graph"].edges()),
               "expected": ", ".join(r["discovery"]["expected"].edges()), "score": r["discovery"]["match"]["score"],
               "hard checks": r["discovery"]["match"]["hard_checks"],
               "bootstrap mean score": r["discovery"]["stability"].mean_score} for r in results.values()])

# %%
# every target and rule is in causal_lib.core.criteria: a rate or estimate passes only when its whole 95%
# interval meets the target, INCONCLUSIVE otherwise
mine = results[model_name]
# judged where the loss did not train: the untrained point farthest past its margin (the trained point's row is
# in the table above, labelled); no point with a margin: not measured
eqm = mine["worst_untrained"]
match = mine["discovery"]["match"]
power = controls["base_above_margin"]
criteria_rows = {
    "hsic_type1": criteria.row("hsic_type1", calibration["type1"]),
    "hsic_power": criteria.row("hsic_power", controls["planted_rejects_everywhere"] and controls["null_not_rejected_everywhere"],
                               measured=f"planted rejects on every model: {controls['planted_rejects_everywhere']}; shuffled "
                                        f"null not rejected on every model: {controls['null_not_rejected_everywhere']}"),
    "insertion_equivalence": criteria.row("insertion_equivalence", {**eqm, "power": power} if eqm else None,
                                          measured=f"{eqm['value']:.2f} [{eqm['lo']:.2f}, {eqm['hi']:.2f}] at "
                                                   f"{eqm['point']}; base {controls['base_verdict']}" if eqm else
                                                   "no untrained point with a margin (the base was not shown above 1 "
                                                   "on validation)",
                                          threshold=eqm["margin"] if eqm else None),
    "epsilon_causal": criteria.row("epsilon_causal", mine["representation"]["epsilon_causal"]),
    "sep": criteria.row("sep", mine["representation"]["sep"]),
    "graph_match": criteria.row("graph_match", match, measured=f"{match['score']:.2f} (base "
                                f"{results['none']['discovery']['match']['score']:.2f}); hard checks pass: {match['hard_pass']}"),
    "asr": criteria.row("asr", mine["representation"]["asr"]),
}
table = [{c: r[c] for c in ("criterion", "measured", "target", "status")} for r in criteria_rows.values()]
# the type-I calibration is judged only from the criterion's minimum of repetitions on; below it, it is NOT
# MEASURED, and NOT MEASURED is not met
verdict = criteria.overall(criteria_rows)
metrics = verify_models.metrics_record(results, model_name, calibration, controls, table, verdict, cfg.run.seed,
                                      margin=margin)
run_folder.write_metrics(paths, "verification", metrics)
reports.write_report(paths, "WEEK3_VERIFICATION_REPORT.md", report_text.verification_report(
    model_name, cfg.run.seed, len(pairs), d, table, table_df.to_dict("records"), hsic_df.to_dict("records"),
    cal, controls, metrics["bounds"], verdict, point_rows=points_df.to_dict("records"), margin=margin,
    commit=code_commit()))
reports.record_verdict(paths, "07_causal_verification", verdict, report_text.criteria_summary(table))
pd.DataFrame(table)
