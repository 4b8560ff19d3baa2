"""Every model of the training registry trains: a few AdamW steps on real digits lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train.data import Augment, TrainPipeline, load_dataset
from train.models import build_flax, load_all
from train.step import make_train_step

MODELS = load_all()


@pytest.fixture(scope="module")
def batch():
    data = load_dataset("mnist5k")
    x, y = next(TrainPipeline(data, batch_size=32, seed=0, augment=Augment(), epochs=1).iterator())
    return data.info, jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_few_steps_lower_the_loss(name, batch):
    info, x, y = batch
    spec = MODELS[name]
    model = build_flax(spec, info, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(spec.train.get("lr", 1e-3))
    opt_state = tx.init(params)

    def loss_fn(m, batch):
        logits = m(batch[0])
        assert logits.shape == (batch[0].shape[0], info.num_classes)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean(), None

    step = make_train_step(graphdef, tx, loss_fn)
    losses = []
    for _ in range(8):
        params, rest, opt_state, loss, _ = step(params, rest, opt_state, (x, y))
        losses.append(float(loss))
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-2:]) < losses[0], losses
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
