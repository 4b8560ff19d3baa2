"""Every ``nnx.Module`` building block: one file per mechanism family (channels-last),
``basic.py`` (torch-compatible Linear, Conv2d, LayerNorm, BatchNorm, DropPath, Dropout)
and ``reversible.py``. Their math is in :mod:`flaxattn.ops`."""
