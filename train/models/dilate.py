"""DilateFormer for the training registry: three stages sized for 28x28 digits.

The stem takes 28x28 to 7x7; dilated attention (dilations 1-3) works there, and
the 4x4 and 2x2 stages use global attention (a 3x3 window dilated by 3 would
mostly see padding on maps that small).
"""

from train.models import ModelSpec, register_model

register_model(
    ModelSpec(
        "dilateformer",
        "models.dilateformer.DilateFormer",
        lambda d: {
            "img_size": (d.height, d.width),
            "in_chans": d.channels,
            "num_classes": d.num_classes,
            "embed_dim": 24,
            "depths": (1, 1, 1),
            "num_heads": (3, 6, 6),
            "dilate_attention": (True, False, False),
            "downsamples": (True, True, False),
            "mlp_ratio": 2.0,
            "drop_path": 0.0,
        },
        description="DilateFormer: stem to 7x7, a dilated stage (24 ch), two global (48, 96)",
        train={"lr": 2e-3, "batch_size": 64, "epochs": 3},
    )
)
