"""DilateFormer for the training registry: three stages sized for 28x28 digits."""

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
            "dilate_attention": (True, True, False),
            "downsamples": (True, True, False),
            "mlp_ratio": 2.0,
            "drop_path": 0.0,
        },
        description="DilateFormer: stem to 7x7, two dilated stages (24/48), one global (96)",
        train={"lr": 2e-3, "batch_size": 64, "epochs": 3},
    )
)
