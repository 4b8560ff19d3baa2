"""ACmix ResNet for the training registry.

``python -m train --model acmix_resnet`` trains it on the default dataset (mnist5k).
The CIFAR-style stem keeps 28x28 digits at 28, 14, 7 and 4 pixels through the four
stages; the last one is exactly the 4x4 that the 7x7 window's reflection padding
needs (the ImageNet stem would leave 1x1 maps there).
"""

from train.models import ModelSpec, register_model

register_model(
    ModelSpec(
        "acmix_resnet",
        "models.acmix_resnet.ACmixResNet",
        lambda d: {
            "layers": (1, 1, 1, 1),
            "k_att": 7,
            "head": 4,
            "k_conv": 3,
            "num_classes": d.num_classes,
            "in_channels": d.channels,
            "stem": "cifar",
            "base_planes": 8,
        },
        description="ACmix ResNet, 4 stages of one bottleneck (32-256 channels), 3x3 stem",
        train={"lr": 2e-3, "batch_size": 64, "epochs": 3},
    )
)
