"""genlab: classic generative-model and minimax-training experiments, one command each."""

__version__ = "0.1.0"
