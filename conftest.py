import jax

# One setting for the whole suite: float64 cases need 64-bit JAX, and float32
# cases stay float32 (check_parity fails a case whose Flax output is promoted).
jax.config.update("jax_enable_x64", True)
