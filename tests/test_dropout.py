"""flaxattn.ops.dropout: the hashed masks are Bernoulli(keep) enough for dropout,
and the module behaves as nnx.Dropout does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxattn.layers.basic import Dropout
from flaxattn.ops.dropout import keep_mask, random_bits

N = 1 << 20


def _sigma(p: float, n: int) -> float:
    return np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_keep_rate(keep):
    mask = np.asarray(keep_mask(jax.random.key(3), keep, (N,)))
    assert abs(mask.mean() - keep) < 5 * _sigma(keep, N)


def test_bits_are_uniform_in_every_byte():
    bits = np.asarray(random_bits(jax.random.key(0), (N,)))
    for shift in (0, 8, 16, 24):
        counts = np.bincount((bits >> shift) & 0xFF, minlength=256)
        chi2 = ((counts - N / 256) ** 2 / (N / 256)).sum()
        assert chi2 < 400, (shift, chi2)  # 255 dof: mean 255, sd 22.6


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_neighbours_are_independent(axis):
    keep = 0.5
    mask = np.asarray(keep_mask(jax.random.key(1), keep, (64, 128, 128)))
    a = np.moveaxis(mask, axis, 0)
    both = (a[1:] & a[:-1]).mean()
    assert abs(both - keep**2) < 5 * _sigma(keep**2, a[1:].size)


def test_keys_give_independent_masks_and_the_same_key_the_same_mask():
    keep = 0.5
    k = jax.random.key(7)
    a = np.asarray(keep_mask(jax.random.fold_in(k, 0), keep, (N,)))
    b = np.asarray(keep_mask(jax.random.fold_in(k, 1), keep, (N,)))
    assert abs((a & b).mean() - keep**2) < 5 * _sigma(keep**2, N)
    np.testing.assert_array_equal(a, np.asarray(keep_mask(jax.random.fold_in(k, 0), keep, (N,))))


def test_other_prng_implementations_are_accepted():
    mask = np.asarray(keep_mask(jax.random.key(0, impl="rbg"), 0.5, (N,)))
    assert abs(mask.mean() - 0.5) < 5 * _sigma(0.5, N)


def test_module_matches_nnx_dropout_semantics():
    x = jnp.ones((8, 16, 32))
    drop = Dropout(0.25, broadcast_dims=(1,), rngs=nnx.Rngs(0))
    y = np.asarray(drop(x))
    assert set(np.unique(y)) <= {0.0, 1 / 0.75}
    assert (y == y[:, :1]).all()  # broadcast over axis 1
    first = y
    assert not np.array_equal(np.asarray(drop(x)), first)  # a fresh mask per call
    drop.eval()
    np.testing.assert_array_equal(np.asarray(drop(x)), np.asarray(x))
    assert (np.asarray(Dropout(1.0, rngs=nnx.Rngs(0))(x)) == 0).all()


def test_gradient_flows_only_through_kept_entries():
    x = jnp.arange(1.0, 1025.0)
    key = jax.random.key(5)
    kept = np.asarray(keep_mask(key, 0.5, x.shape))

    @jax.jit
    def f(x, key):
        return jnp.sum(Dropout(0.5)(x, rngs=key) ** 2)

    g = np.asarray(jax.grad(f)(x, key))
    np.testing.assert_allclose(g, np.where(kept, 2 * np.asarray(x) / 0.25, 0.0), rtol=1e-6)
