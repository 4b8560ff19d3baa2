"""Benchmarks: flaxattn under jax.jit vs the torch_ref twin (eager and torch.compile)."""
