"""Pure functions, no modules: kernels with their custom VJPs, one file per kernel family.

``local.py`` (windowed and ACmix local attention), ``dilated.py`` (DilateFormer's MSDA),
``pallas_local.py`` (the same window attention as Pallas GPU kernels), ``fused.py`` (choosing
an ``attention_impl``: einsums, ``jax.nn.dot_product_attention`` XLA/cuDNN, Pallas),
``depthwise.py`` (depthwise and grouped shift convolutions), ``relative.py`` (AA-Conv's
relative logits), ``norm.py`` (LayerNorm and exact GELU), ``dense.py`` (dense layers) and
``batchnorm.py`` (train-mode BatchNorm), all with PyTorch's closed-form backward passes,
``pointwise.py`` (1x1 convolution as a matmul with a two-GEMM backward), ``reversible.py``
(the reversible coupling), ``dropout.py`` (hashed dropout masks), ``reduce.py`` (a max
whose gradient goes to the first maximum); plus ``init.py`` (torch-like initialisers) and
``checks.py`` (argument checks). The modules that use them are in :mod:`flaxattn.layers`.
"""
