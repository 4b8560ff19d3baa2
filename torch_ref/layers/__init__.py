"""PyTorch twins of ``flaxattn.layers``, one file per family (channels-first)."""
