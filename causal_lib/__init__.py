"""causal-pi: training language models on which injected instructions have no causal effect."""

__version__ = "0.1.0"
