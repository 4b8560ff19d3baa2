"""Property tests: SE and both CBAMs match their twins over random shapes and channel counts."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_ref
from flaxattn.parity import check_parity

# Each example compiles for a new shape (jit: one compile beats eager per-op compiles);
# 8 per module keeps the three at about 15 s of suite time.
SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POOLS = st.lists(st.sampled_from(["avg", "max", "lp", "lse"]), min_size=1, max_size=4)

# name -> (draw the torch module for `channels`, parameters whose gradient may be zero).
# The MLPs' ReLUs can all be dead for a tiny hidden width (1 or 2 units): those
# weights then get no gradient in either framework, correctly. Values are still
# compared; only the non-zero requirement is lifted (the registry keeps it).
MODULES = {
    "se": (
        lambda c, draw: torch_ref.SELayer(c, draw(st.integers(1, c))),
        ["fc.0.weight", "fc.2.weight"],
    ),
    "cbam": (
        lambda c, draw: torch_ref.CBAM(c, draw(st.integers(1, c))),
        ["channel_attention.shared_MLP.0.weight", "channel_attention.shared_MLP.2.weight"],
    ),
    "jongchan_cbam": (
        lambda c, draw: torch_ref.JongchanCBAM(c, draw(st.integers(1, c)), draw(POOLS)),
        ["ChannelGate.mlp.1.weight", "ChannelGate.mlp.1.bias", "ChannelGate.mlp.3.weight"],
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
@SETTINGS
@given(data=st.data())
def test_matches_twin(name, data):
    make, dead_relu_ok = MODULES[name]
    shape = (
        data.draw(st.integers(1, 3), label="batch"),
        data.draw(st.integers(2, 48), label="channels"),
        data.draw(st.integers(1, 9), label="height"),
        data.draw(st.integers(1, 9), label="width"),
    )
    torch.manual_seed(0)
    module = make(shape[1], data.draw)
    report = check_parity(module, input_shapes=[shape], perturb=0.1, zero_grad_ok=dead_relu_ok)
    report.assert_ok()
