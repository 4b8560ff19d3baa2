"""PyTorch twins of ``flaxattn.models``."""
