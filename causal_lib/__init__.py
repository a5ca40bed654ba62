"""causal-pi: training language models on which injected instructions have no causal effect."""

__version__ = "0.1.0"

import logging as _logging
import warnings as _warnings

# Noise in every executed chapter that a reader cannot act on: tqdm.auto's notebook bars need
# ipywidgets (text bars are what a shared HTML report can show anyway), and bitsandbytes' CPU backend
# offers a hub kernel download at import, which this offline book never wants.
_warnings.filterwarnings("ignore", message="IProgress not found")
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
