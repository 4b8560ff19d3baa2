"""Property tests: SE and CBAM match their twins over random shapes and channel counts."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_ref
from flaxattn.parity import check_parity

# Each example compiles for a new shape (jit: one compile beats eager per-op compiles).
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# The MLPs' ReLUs can all be dead for a tiny hidden width (1 or 2 units): those
# weights then get no gradient in either framework, correctly. Values are still
# compared; only the non-zero requirement is lifted (the registry keeps it).
DEAD_RELU_OK = {
    "se": ["fc.0.weight", "fc.2.weight"],
    "cbam": ["channel_attention.shared_MLP.0.weight", "channel_attention.shared_MLP.2.weight"],
    "jongchan": ["ChannelGate.mlp.1.weight", "ChannelGate.mlp.1.bias", "ChannelGate.mlp.3.weight"],
}


@st.composite
def image_shapes(draw, min_channels=1):
    b = draw(st.integers(1, 3))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    c = draw(st.integers(min_channels, 48))
    return b, c, h, w


@SETTINGS
@given(shape=image_shapes(), data=st.data())
def test_se_matches_twin(shape, data):
    reduction = data.draw(st.integers(1, shape[1]))
    torch.manual_seed(0)
    report = check_parity(
        torch_ref.SELayer(shape[1], reduction),
        input_shapes=[shape],
        perturb=0.1,
        zero_grad_ok=DEAD_RELU_OK["se"],
    )
    report.assert_ok()


@SETTINGS
@given(shape=image_shapes(min_channels=2), data=st.data())
def test_cbam_matches_twin(shape, data):
    ratio = data.draw(st.integers(1, shape[1]))
    torch.manual_seed(0)
    report = check_parity(
        torch_ref.CBAM(shape[1], ratio),
        input_shapes=[shape],
        perturb=0.1,
        zero_grad_ok=DEAD_RELU_OK["cbam"],
    )
    report.assert_ok()


@SETTINGS
@given(shape=image_shapes(min_channels=2), data=st.data())
def test_jongchan_cbam_matches_twin(shape, data):
    ratio = data.draw(st.integers(1, shape[1]))
    pools = data.draw(
        st.lists(st.sampled_from(["avg", "max", "lp", "lse"]), min_size=1, max_size=4)
    )
    torch.manual_seed(0)
    report = check_parity(
        torch_ref.JongchanCBAM(shape[1], ratio, pools),
        input_shapes=[shape],
        perturb=0.1,
        zero_grad_ok=DEAD_RELU_OK["jongchan"],
    )
    report.assert_ok()
