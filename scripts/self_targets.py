"""Self-generated targets for the vendored SEP items: SmolLM2-135M-Instruct's own greedy answer to each
(instruction, input), as Meta SecAlign (SecAlign++) trains on the undefended model's own answers.

Provenance, not a runtime step (the file it writes is committed): the realistic training items then teach
"answer the trusted instruction as you would without the injection" without importing another model's
answers (the source's Llama-3 answers are not used: their licence restricts training other models on them).

    HF_HUB_OFFLINE=1 python scripts/self_targets.py [--limit N]

Greedy, at most MAX_NEW_TOKENS new tokens, cut back to the last sentence end when the answer ran to the cap;
the prompt is the book's (system = instruction, user turn = the input). Writes
causal_lib/data/vendored/sep_1000_smollm2_targets.jsonl ({"id", "target", "capped"}).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_NEW_TOKENS = 96


def trim(answer: str, capped: bool) -> str:
    """An answer that hit the token cap ends at its last sentence end (when there is one past a third)."""
    if not capped:
        return answer.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", answer)]
    return answer[:ends[-1]].strip() if ends and ends[-1] > len(answer) / 3 else answer.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    import torch

    from causal_lib.config import load_config
    from causal_lib.models.generate import generate
    from causal_lib.models.load import load_hf_base

    torch.manual_seed(0)
    cfg = load_config(ROOT / "params" / "default.yaml")
    model, tok = load_hf_base(cfg.model)  # the pristine hub model: no tuned base, no LoRA
    src = ROOT / "causal_lib" / "data" / "vendored" / "sep_1000.jsonl"
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()][:args.limit]
    t0 = time.time()
    outs = generate(model, tok, [r["instruction"] for r in rows], [r["input"] for r in rows],
                    max_new_tokens=MAX_NEW_TOKENS, batch_size=16)
    n_tokens = [len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs]
    out = [{"id": r["id"], "target": trim(o, k >= MAX_NEW_TOKENS - 1), "capped": k >= MAX_NEW_TOKENS - 1}
           for r, o, k in zip(rows, outs, n_tokens)]
    dst = src.with_name("sep_1000_smollm2_targets.jsonl")
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in out)
    dst.write_text(text, encoding="utf-8")
    print(f"{len(out)} targets in {time.time() - t0:.0f} s, {sum(r['capped'] for r in out)} capped; "
          f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
