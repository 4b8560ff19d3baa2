"""The checker itself: it must fail on real bugs, not only pass on correct code."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import flaxattn
import torch_ref
from flaxattn.parity import ParityError, check_parity


def test_passes_and_reports_every_tensor():
    torch.manual_seed(0)
    report = check_parity(
        torch_ref.AttentionGate(6, 5, 3),
        input_shapes=[(2, 6, 4, 5)] * 1 + [(2, 5, 4, 5)],
        mode="train",
        steps=2,
        perturb=0.1,
    )
    report.assert_ok()
    kinds = [r.kind for r in report.rows]
    assert kinds.count("output") == 2 and kinds.count("grad_input") == 4
    assert kinds.count("grad_param") == 2 * 12 and kinds.count("buffer") == 2 * 9


def test_wrong_weights_fail():
    torch.manual_seed(0)
    stranger = flaxattn.SELayer(16, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(123))
    report = check_parity(
        torch_ref.SELayer(16, 4), stranger, input_shapes=[(2, 16, 3, 3)], copy_weights=False
    )
    assert not report.ok
    assert {r.kind for r in report.failures()} >= {"output", "grad_param"}
    with pytest.raises(ParityError, match="FAIL"):
        report.assert_ok()


def test_flax_convention_momentum_fails_on_buffers_only():
    torch.manual_seed(0)
    tm = torch_ref.AttentionGate(6, 5, 3)
    fm = flaxattn.AttentionGate(6, 5, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    fm.W_g.layers[1].momentum = 0.9  # Flax's convention, the classic porting bug
    report = check_parity(tm, fm, input_shapes=[(2, 6, 4, 5), (2, 5, 4, 5)], mode="train")
    failed = {(r.kind, r.name) for r in report.failures()}
    assert failed == {("buffer", "W_g.1.running_mean"), ("buffer", "W_g.1.running_var")}


class _FrozenSE(flaxattn.SELayer):
    """A twin whose gate is cut from the graph: same outputs, no gradient to fc."""

    def __call__(self, x):
        y = jax.lax.stop_gradient(self.fc(x.mean(axis=(1, 2))))
        return x * y[:, None, None, :]


def test_missing_gradient_fails():
    torch.manual_seed(0)
    fm = _FrozenSE(16, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    report = check_parity(torch_ref.SELayer(16, 4), fm, input_shapes=[(2, 16, 3, 3)])
    notes = {r.name: r.note for r in report.failures()}
    assert notes["fc.0.weight"] == "no gradient reached this parameter"
    assert not any(r.kind == "output" for r in report.failures())


class _PromotingSE(flaxattn.SELayer):
    def __call__(self, x):
        return super().__call__(x) * jnp.ones((), jnp.float64)


def test_float32_promotion_fails():
    torch.manual_seed(0)
    fm = _PromotingSE(16, 4, rngs=nnx.Rngs(0))
    report = check_parity(
        torch_ref.SELayer(16, 4), fm, input_shapes=[(2, 16, 3, 3)], dtype="float32"
    )
    assert [r.kind for r in report.failures()] == ["dtype"]


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"`dtype` \(='float16'\)"):
        check_parity(torch_ref.SELayer(16, 4), input_shapes=[(1, 16, 2, 2)], dtype="float16")
    with pytest.raises(ValueError, match=r"`mode` \(='test'\)"):
        check_parity(torch_ref.SELayer(16, 4), input_shapes=[(1, 16, 2, 2)], mode="test")


def test_cli_prints_table_and_exit_code():
    cmd = [
        sys.executable,
        "-m",
        "flaxattn.parity",
        "torch_ref.CBAM",
        "--kwargs",
        '{"channel": 32}',
        "--shape",
        "2,32,9,7",
        "--mode",
        "train",
        "--steps",
        "2",
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "channel_attention.shared_MLP.0.weight" in ok.stdout
    assert ok.stdout.strip().endswith("PASS")
    strict = subprocess.run(
        cmd + ["--rtol", "0", "--atol", "0"], capture_output=True, text=True, timeout=300
    )
    assert strict.returncode == 1 and strict.stdout.strip().endswith("FAIL")


def _torch_state(module) -> tuple:
    return module.training, {k: v.detach().clone() for k, v in module.state_dict().items()}


def _flax_state(module) -> dict:
    return {
        path: (type(v).__name__, np.asarray(v[...]))
        for path, v in nnx.to_flat_state(nnx.state(module))
    }


@pytest.mark.parametrize(
    "x64, dtype, give_flax",
    # (A float64 Flax module can only be built with x64 on: from_torch builds it otherwise.)
    [(False, "float64", False), (False, "float32", True), (True, "float64", True)]
    + [(True, "float32", True)],
)
def test_no_side_effects(x64, dtype, give_flax):
    # The caller's (global) jax_enable_x64 is the same afterwards, and neither module
    # changes: not the torch weights, buffers or train flag, not the Flax state or its mode.
    torch.manual_seed(0)
    tm = torch_ref.AttentionGate(6, 5, 3).eval()
    suite_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64)
    try:
        fm = flaxattn.AttentionGate(6, 5, 3, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
        fm.eval()
        before = _torch_state(tm), _flax_state(fm), fm.W_g.layers[1].use_running_average
        report = check_parity(
            tm,
            fm if give_flax else None,
            input_shapes=[(2, 6, 4, 5), (2, 5, 4, 5)],
            dtype=dtype,
            mode="train",
            steps=2,
            perturb=0.1,
            # conv biases before train-mode BatchNorm: round-off in float32
            zero_grad_ok=("W_g.0.bias", "W_x.0.bias", "psi.0.bias"),
        )
        assert jax.config.jax_enable_x64 is x64
    finally:
        jax.config.update("jax_enable_x64", suite_x64)
    report.assert_ok()
    assert not hasattr(fm, "torch_layout")
    (training, sd), flax_state, running = before
    assert tm.training == training and fm.W_g.layers[1].use_running_average == running
    assert sd.keys() == tm.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in tm.state_dict().items())
    after = _flax_state(fm)
    assert after.keys() == flax_state.keys()
    assert all(
        after[p][0] == t and np.array_equal(after[p][1], a) for p, (t, a) in flax_state.items()
    )
