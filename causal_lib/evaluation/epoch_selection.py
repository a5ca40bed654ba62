"""Chapter 06: the plan's metrics for every epoch checkpoint of one defense, and the choice of best_model."""
from __future__ import annotations

from causal_lib.core.run_folder import RunPaths
from causal_lib.config import Config
from causal_lib.data.records import load_split
from causal_lib.defenses.load import records_for
from causal_lib.evaluation.run import evaluate_records
from causal_lib.evaluation.summary import summarise
from causal_lib.models.checkpoints import checkpoint_json, load_checkpoint
from causal_lib.training.examples import make_pairs
from causal_lib.training.selection import SELECT_BY, SELECTION_RULE, mean_task_loss, validation_score_fn
from causal_lib.training.trainer import set_best_model
from causal_lib.stats.invariance import representation_metrics


def validate_epochs(cfg: Config, paths: RunPaths, defense: str) -> dict:

    root = paths.checkpoints / defense
    epoch_dirs = sorted(root.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    if not epoch_dirs:
        raise FileNotFoundError(f"no epoch checkpoints under {root}: run 05_train for defense={defense} first")
    val = load_split(paths.data, "val")
    train = load_split(paths.data, "train")
    val_items = [r for r in val if r.kind in ("clean", "injected")]
    rows = []
    for d in epoch_dirs:
        model, tok = load_checkpoint(d, cfg.model, is_trainable=False)
        select = validation_score_fn(cfg, val_items, tok, lambda rs: records_for(defense, rs, tok))
        pairs = make_pairs(records_for(defense, val, tok))[: cfg.train.val_pairs]
        rep = representation_metrics(model, tok, pairs, cfg)
        summary = summarise(evaluate_records(model, tok, records_for(defense, val_items, tok), cfg.eval))
        cs, asr, ben = rep["causal_stability"], summary["asr"], summary["benign_accuracy"]
        clean_train = [r for r in records_for(defense, train, tok) if r.kind == "clean"]
        clean_val = [r for r in records_for(defense, val, tok) if r.kind == "clean"]
        rows.append({"epoch": int(d.name.split("_")[1]),
                     "causal_stability": cs["value"], "causal_stability_lo": cs["lo"], "causal_stability_hi": cs["hi"],
                     "epsilon_causal": rep["epsilon_causal"]["value"],
                     "asr": asr["rate"], "asr_lo": asr["lo"], "asr_hi": asr["hi"],
                     "benign_accuracy": ben["rate"], "benign_accuracy_lo": ben["lo"], "benign_accuracy_hi": ben["hi"],
                     "train_loss": mean_task_loss(model, tok, clean_train, cfg),
                     "val_loss": mean_task_loss(model, tok, clean_val, cfg),
                     # the contract's rule (training.selection), the same score training selected by
                     "selection_loss": select(model)[SELECT_BY]})
        del model
    best = min(rows, key=lambda r: r["selection_loss"])["epoch"]
    trained_best = None
    best_dir = root / "best_model"
    if best_dir.exists():
        meta = checkpoint_json(best_dir)
        trained_best = meta.get("extra", {}).get("epoch")
    if trained_best != best:
        set_best_model(root, best)
    at_best = next(r for r in rows if r["epoch"] == best)
    return {"defense": defense, "epochs": rows, "best_epoch": best, "training_best_epoch": trained_best,
            "selection_agrees": trained_best == best, "gap_at_best": at_best["val_loss"] - at_best["train_loss"],
            "criterion": SELECTION_RULE}
