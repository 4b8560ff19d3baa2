"""PyTorch twins of ``flaxattn.ops`` helpers that hold modules."""
