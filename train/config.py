"""The training configuration: one frozen dataclass, validated on construction.

Defaults come in three layers: the dataclass defaults below, the model's own
``ModelSpec.train`` defaults, then what the command line sets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    ``model_overrides`` are constructor kwargs of the model (``--set depth=4``).
    Fields that must match for ``--resume`` to continue a run are listed in
    :data:`RESUME_KEYS`.
    """

    model: str = "vit_tiny"
    dataset: str = "mnist5k"
    data_path: str | None = None
    image_size: int = 32  # for --dataset folder
    test_fraction: float = 0.2
    model_overrides: dict = dataclasses.field(default_factory=dict)

    epochs: int = 5
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    final_lr_ratio: float = 0.01
    warmup_steps: int = 100
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_norm: float | None = 1.0
    label_smoothing: float = 0.1
    augment_pad: int = 2
    augment_flip: float = 0.0
    dtype: str = "float32"
    seed: int = 0

    workdir: str = "runs/default"
    checkpoint_every: int = 200  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 3
    resume: bool = False
    init_from: str | None = None
    export: str | None = None
    parity_check: bool = True  # the parity gate of --init-from (train/gate.py)
    log_every: int = 20
    progress: bool = True
    overwrite: bool = False  # start afresh in a workdir that holds another run

    # Scale: none of these changes what a step computes, so a run may resume
    # with other values (Orbax reshards the state, the pipeline re-slices).
    mesh: str | None = None  # "data=D,fsdp=F"; default: every device on `data`
    workers: int = 0  # grain worker processes (0: decode in this process)
    tensorboard: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            # NaN passes every comparison below, and inf makes no schedule.
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"`{f.name}` (={v}) must be a finite number")

        def positive(**kv):
            for k, v in kv.items():
                if v is None or v <= 0:
                    raise ValueError(f"`{k}` (={v}) must be positive")

        positive(
            batch_size=self.batch_size,
            lr=self.lr,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
            log_every=self.log_every,
            image_size=self.image_size,
        )
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"`max_steps` (={self.max_steps}) must be >= 0")
        if self.epochs < 0:
            raise ValueError(f"`epochs` (={self.epochs}) must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` (={self.optimizer!r}) must be one of {list(OPTIMIZERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` (={self.dtype!r}) must be one of {list(DTYPES)}")
        for name in ("final_lr_ratio", "label_smoothing", "augment_flip"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"`{name}` (={v}) must be in [0, 1]")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"`test_fraction` (={self.test_fraction}) must be in (0, 1)")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.augment_pad < 0:
            raise ValueError(
                f"`warmup_steps` (={self.warmup_steps}), `weight_decay` (={self.weight_decay}) "
                f"and `augment_pad` (={self.augment_pad}) must be >= 0"
            )
        if self.workers < 0:
            raise ValueError(f"`workers` (={self.workers}) must be >= 0 (0: no worker processes)")
        if self.resume and self.overwrite:
            raise ValueError("`resume` and `overwrite` exclude each other")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"`clip_norm` (={self.clip_norm}) must be positive or None")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# A resumed run must agree with the checkpoint on these: they change what the
# next step computes (epochs too: they set the length of the cosine schedule).
# Logging, paths and export may change.
RESUME_KEYS = (
    "epochs",
    "model",
    "dataset",
    "data_path",
    "image_size",
    "test_fraction",
    "model_overrides",
    "batch_size",
    "optimizer",
    "lr",
    "final_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "momentum",
    "clip_norm",
    "label_smoothing",
    "augment_pad",
    "augment_flip",
    "dtype",
    "seed",
)
