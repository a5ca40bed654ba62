"""The input filter's report: each detector's (and the combined filter's) true- and false-positive rates with
Clopper-Pearson intervals (detector_rates) and the table chapter 08 shows (detector_report)."""
from __future__ import annotations

from typing import Sequence

from causal_lib.config import Config
from causal_lib.data.records import load_split
from causal_lib.defenses.filters import FilterDefense, build_filter
from causal_lib.stats.intervals import Rate, rate


def detector_rates(defense: FilterDefense, records: Sequence, alpha: float = 0.05) -> dict:
    """Per detector (and the combined filter): true-positive rate on injected items, false-positive rate on
    clean items and on benign look-alikes, each k/n with a Clopper-Pearson interval; TPR also per attack
    family and for seen vs held-out families."""

    recs = [r for r in records if r.kind in ("injected", "clean", "lookalike")]
    flags = defense.flags(recs)
    out = {}
    for name, fl in flags.items():
        def r_of(pred):
            sel = [f for r, f in zip(recs, fl) if pred(r)]
            return rate(sum(sel), len(sel), alpha).to_dict()

        fams = sorted({r.family for r in recs if r.kind == "injected" and r.family})
        out[name] = {
            "tpr_injected": r_of(lambda r: r.kind == "injected"),
            "tpr_seen": r_of(lambda r: r.kind == "injected" and not r.held_out),
            "tpr_held_out": r_of(lambda r: r.kind == "injected" and r.held_out),
            "fpr_clean": r_of(lambda r: r.kind == "clean"),
            "fpr_lookalike": r_of(lambda r: r.kind == "lookalike"),
            "tpr_by_family": {f: r_of(lambda r, f=f: r.kind == "injected" and r.family == f) for f in fams},
        }
    return out


_REPORT_COLUMNS = (("tpr_injected", "TPR injected"), ("tpr_seen", "TPR seen families"),
                   ("tpr_held_out", "TPR held-out families"), ("fpr_clean", "FPR clean"),
                   ("fpr_lookalike", "FPR look-alikes"))


def detector_report(cfg: Config, paths, split: str = "test", model=None, tokenizer=None, records=None,
                    mode: str = "any") -> dict:
    """Each detector's rates on the run's `split` (default test): {"rows": one table row per detector
    (rates as "x% [lo, hi] (k/n)"), "rates": detector_rates(...), "info": how KAD was chosen}."""

    if records is None:

        records = load_split(paths.data, split)
    f = build_filter(cfg, paths, model, tokenizer, mode=mode)
    rates = detector_rates(f, records, alpha=cfg.stats.alpha)
    rows = []
    for name, r in rates.items():
        row = {"detector": {"kad": "known-answer detection", "classifier": "TF-IDF + logistic regression",
                            "filter": f"input filter ({mode})"}.get(name, name)}
        for key, label in _REPORT_COLUMNS:
            x = Rate(**r[key])
            row[label] = f"{x} ({x.k}/{x.n})"
        dv = f.info.get("detector_validation")
        if dv and name in dv["scores"]:
            j = dv["scores"][name]["j"]
            row["validation J"] = f"{j:.2f}"
            row["in the filter"] = "yes" if name in dv["combined"] else f"no (J {j:.2f}, floor {dv['floor']})"
        rows.append(row)
    return {"split": split, "mode": mode, "rows": rows, "rates": rates, "info": f.info}
