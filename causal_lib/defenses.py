"""The defenses compared in the book (DESIGN.md section 5): one list, read by params validation,
the training chapter and the evaluation chapter."""

# Every defense the evaluation compares, in report order.
DEFENSES = ["none", "filter", "struq", "secalign", "causal"]
# Those that train a model of their own in 05_train (the others reuse the base).
TRAINED_DEFENSES = ["struq", "secalign", "causal"]

LABELS = {
    "none": "no defense",
    "filter": "input filtering",
    "struq": "StruQ",
    "secalign": "SecAlign",
    "causal": "causal (ours)",
}
