"""Attention-augmented Wide-ResNet for the training registry."""

from train.models import ModelSpec, register_model

register_model(
    ModelSpec(
        "aa_wide_resnet",
        "AAWideResNet",
        lambda d: {
            "depth": 10,
            "widen_factor": 1,
            "dropout_rate": 0.0,
            "num_classes": d.num_classes,
            "shape": (d.height, d.width),
            "in_channels": d.channels,
            # Attention over all positions costs (HW)^2: a stride-2 stem makes the
            # largest map 14x14 on MNIST, 16x cheaper than upstream's 28x28.
            "stem_stride": 2,
        },
        description="AA-Wide-ResNet-10-1, stride-2 stem (20/20/40/60 channels, Nh=4, relative)",
        train={"lr": 2e-3, "batch_size": 32, "epochs": 2},
    )
)
