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


# Measured figures go stale in API docstrings: they live in bench/NOTES.md and the
# README's Benchmarks section with the command that measures them (issue 14).
_FIGURE = (
    r"\d\s?(ms|MB|GB|img/s)\b|\b\d+(\.\d+)?x\s+(faster|slower)"
    r"|\d+%\s+of\s+the\s+(temp|time|step)|\bmeasured\s+\d"
)


def _docstrings(module):
    import inspect

    yield module.__name__, module.__doc__
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj.__doc__
            for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                if inspect.isfunction(member):
                    yield f"{module.__name__}.{name}.{attr}", member.__doc__


@pytest.mark.parametrize("name", MODULES)
def test_no_measured_figures_in_docstrings(name):
    import re

    found = [
        where
        for where, doc in _docstrings(importlib.import_module(name))
        if doc and re.search(_FIGURE, doc)
    ]
    assert found == []
