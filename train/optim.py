"""Optimizer: AdamW or SGD with momentum, warmup + cosine schedule, global-norm
clipping, weight decay masked off norms, biases and embeddings."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from train.config import TrainConfig

# Parameters named like these are never decayed, whatever their rank.
NO_DECAY_NAMES = ("bias", "scale", "cls_token", "pos_embedding", "embedding", "rel_")


def decay_mask(params: nnx.State):
    """True for matrices and conv kernels; False for biases, norm scales (rank 1)
    and embeddings/tokens/relative tables, which weight decay would only shrink."""

    def keep(path, leaf) -> bool:
        # The last dict key is the variable's name (a Variable adds a `.value` entry).
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        name = keys[-1] if keys else ""
        return leaf.ndim >= 2 and not any(n in name for n in NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(keep, params)


def schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.final_lr_ratio,
    )


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    lr = schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "adamw":
        parts.append(optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decay_mask))
    else:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(lr, momentum=cfg.momentum))
    return optax.chain(*parts)
