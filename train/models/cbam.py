"""CBAM ResNet for the training registry."""

from train.models import ModelSpec, register_model

register_model(
    ModelSpec(
        "cbam_resnet",
        "models.cbam_resnet.CBAMResNet",
        lambda d: {
            "layers": (1, 1, 1),
            "planes": (8, 16, 32),
            "in_channels": d.channels,
            "num_classes": d.num_classes,
            "expansion": 4,
        },
        description="ResNet of 3 CBAM bottlenecks (32/64/128 channels), 3x3 stem",
        train={"lr": 2e-3, "batch_size": 64, "epochs": 3},
    )
)
