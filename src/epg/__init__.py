"""EPG: pixel-space generative modelling via self-supervised pre-training."""

__version__ = "0.1.0"
