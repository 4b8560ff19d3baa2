"""Shift-and-stack windows equal torch's nn.Unfold (zeros) and ReflectionPad2d + Unfold."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flaxattn.ops.local import neighbourhood, window_padding


@pytest.mark.parametrize(
    "k,d,s", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (7, 1, 1), (3, 3, 2), (1, 1, 2)]
)
@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("hw", [(9, 11), (12, 10)])
def test_matches_unfold(k, d, s, pad_mode, hw):
    h, w = hw
    p = window_padding(k, d)
    if pad_mode == "reflect" and p >= min(h, w):
        pytest.skip("map too small for the reflection pad")
    x = np.random.default_rng(0).standard_normal((2, 3, h, w))
    xt = torch.from_numpy(x)
    if pad_mode == "reflect":
        xt = F.pad(xt, (p, p, p, p), mode="reflect")
        ref = F.unfold(xt, k, dilation=d, padding=0, stride=s)
    else:
        ref = F.unfold(xt, k, dilation=d, padding=p, stride=s)
    ho, wo = -(-h // s), -(-w // s)
    ref = ref.view(2, 3, k * k, ho, wo).permute(0, 3, 4, 2, 1).numpy()  # (B, H', W', k*k, C)
    got = neighbourhood(
        jnp.asarray(x.transpose(0, 2, 3, 1)), k, dilation=d, stride=s, pad_mode=pad_mode
    )
    np.testing.assert_array_equal(np.asarray(got), ref)


def test_errors():
    x = jnp.zeros((1, 3, 3, 2))
    with pytest.raises(ValueError, match="reflection padding of 3 needs maps larger than 3"):
        neighbourhood(x, 7, pad_mode="reflect")
    with pytest.raises(ValueError, match=r"`pad_mode` \(='edge'\)"):
        neighbourhood(x, 3, pad_mode="edge")
