"""The published defenses, trained and evaluated on the same base and test set (DESIGN.md s.5, s.10):
input filtering (known-answer detection + a trained classifier), StruQ and SecAlign.

    from causal_lib.baselines import build_filter, detector_rates, train_struq, train_secalign, struq_prompt
"""
from .card import read_model_card, write_model_card
from .filters import (
    BLOCKED_OUTPUT, KAD_INSTRUCTION, KAD_INSTRUCTION_WORLD, DataClassifier, FilterDefense, KnownAnswerDetector,
    build_filter, choose_kad, classifier_path, detector_rates, detector_report, load_or_train_filter, fit_filter_classifier, kad_variants, model_generate_fn,
    secret_key, train_classifier,
)
from .secalign import SECALIGN_COMPLETION_SHARE, preference_dataset, secalign_pairs, train_secalign
from .struq import (
    DATA_TOKEN, INST_TOKEN, RESERVED_TOKENS, RESP_TOKEN, add_reserved_tokens, attack_style, control_tokens,
    is_struq_tokenizer, reserved_token_ids, strip_reserved, struq_chat_template, struq_dataset, struq_format,
    struq_prompt, struq_training_records, train_struq,
)

__all__ = [
    "write_model_card", "read_model_card",
    "BLOCKED_OUTPUT", "KAD_INSTRUCTION", "KAD_INSTRUCTION_WORLD", "DataClassifier", "FilterDefense",
    "KnownAnswerDetector", "build_filter", "choose_kad", "classifier_path", "detector_rates", "detector_report", "load_or_train_filter", "fit_filter_classifier",
    "kad_variants", "model_generate_fn", "secret_key", "train_classifier",
    "SECALIGN_COMPLETION_SHARE", "preference_dataset", "secalign_pairs", "train_secalign",
    "DATA_TOKEN", "INST_TOKEN", "RESERVED_TOKENS", "RESP_TOKEN", "add_reserved_tokens", "attack_style",
    "control_tokens", "is_struq_tokenizer", "reserved_token_ids", "strip_reserved", "struq_chat_template",
    "struq_dataset", "struq_format", "struq_prompt", "struq_training_records", "train_struq",
]
