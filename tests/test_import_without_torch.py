"""``import flaxattn`` and the torch-free paths work with torch unimportable."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


def test_import_and_convert_without_torch(tmp_path):
    proc = _run(
        """
        import sys
        import jax.numpy as jnp
        import numpy as np
        from flax import nnx
        import flaxattn, flaxattn.convert, flaxattn.parity

        m = flaxattn.CBAM(32, rngs=nnx.Rngs(0))
        assert m(jnp.ones((1, 5, 5, 32))).shape == (1, 5, 5, 32)
        sd = flaxattn.convert.to_torch_state_dict(m)
        for suffix in (".safetensors", ".npz"):
            path = flaxattn.convert.save_weights(sd, "w" + suffix)
            back = flaxattn.convert.load_weights(path)
            m2 = flaxattn.CBAM(32, rngs=nnx.Rngs(1))
            flaxattn.convert.load_state_dict(m2, back)
            assert all(np.array_equal(back[k], v) for k, v in sd.items())
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not block torch")
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules), "torch leaked"
        print("OK")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_pt_files_need_torch_and_say_so(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"not really a checkpoint")
    proc = _run(
        """
        import flaxattn.convert
        flaxattn.convert.load_weights("w.pt")
        """,
        tmp_path,
    )
    assert proc.returncode != 0
    assert "torch is blocked" in proc.stderr
