"""Axial image transformer classifier for the training registry."""

from train.models import ModelSpec, register_model

register_model(
    ModelSpec(
        "axial",
        "models.axial_classifier.AxialClassifier",
        lambda d: {
            "in_channels": d.channels,
            "num_classes": d.num_classes,
            "dim": 24,
            "depth": 2,
            "heads": 4,
            "stem_stride": 2,
            "reversible": True,
        },
        description="3x3/2 stem, reversible AxialImageTransformer (dim 24, depth 2, 4 heads), "
        "mean pool, LayerNorm, Linear",
        train={"lr": 2e-3, "batch_size": 64, "epochs": 3},
    )
)
