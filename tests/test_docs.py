"""Docstring examples in the library run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import flaxattn

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(flaxattn.__path__, "flaxattn.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    import jax.numpy as jnp
    from flax import nnx

    globs = {"jnp": jnp, "nnx": nnx, "flaxattn": flaxattn, **vars(module)}
    result = doctest.testmod(module, globs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
