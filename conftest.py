import jax

# One setting for the whole suite: float64 cases need 64-bit JAX, and float32
# cases stay float32 (check_parity fails a case whose Flax output is promoted).
jax.config.update("jax_enable_x64", True)


def pytest_collection_modifyitems(config, items):
    # Tests marked `slow` (whole training runs, real processes) start first, so that
    # under pytest-xdist (`make test` runs `-n 2`) they do not form a tail at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
