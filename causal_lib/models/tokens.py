"""The embedded model's chat control tokens: the one definition. No text of the world may contain them (the
tokenizer maps them to real special tokens; spoofed separators are written as plain words instead). Kept apart
from models/prompts.py so that data validation reads them without importing torch."""

SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN = "<|system|>", "<|user|>", "<|assistant|>"
END_TOKEN = "<|end|>"  # end of turn = eos: TRL appends eos to completions, so it must close the answer
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN]
