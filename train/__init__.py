"""Training flaxattn models with optax (``python -m train``)."""
