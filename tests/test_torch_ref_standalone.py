"""torch_ref stands alone: every module imports, and every registered twin builds, with
``jax`` and ``flaxattn`` unimportable (issue 14).

The twins' constructor arguments are gathered here (the registries import flaxattn), then
a subprocess that blocks jax and flaxattn imports every ``torch_ref`` module and rebuilds
each twin from its class path and recorded ``init_args``, with the same state_dict keys.
"""

import pathlib
import pickle
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("jax", "jaxlib", "flax", "flaxattn")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    """
)

CHILD = textwrap.dedent(
    """
    import importlib, pickle, pkgutil, sys
    import torch_ref

    modules = [torch_ref.__name__]
    for info in pkgutil.walk_packages(torch_ref.__path__, "torch_ref."):
        importlib.import_module(info.name)
        modules.append(info.name)
    built = []
    for name, module, qualname, args, keys in pickle.load(open(sys.argv[1], "rb")):
        cls = getattr(importlib.import_module(module), qualname)
        twin = cls(**args)
        if sorted(twin.state_dict()) != keys:
            raise SystemExit(f"{name}: state_dict keys differ from the parent's build")
        built.append(name)
    leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    if leaked:
        raise SystemExit(f"leaked: {leaked}")
    print(len(modules), "modules,", len(built), "twins")
    """
)


def _registered_twins() -> list[tuple]:
    """(name, module, class, init_args, state_dict keys) of every registered torch_ref twin."""
    from parity_tests.registry import CASES, load_all
    from torch_ref._twin import Twin
    from train.models import DataInfo, build_torch
    from train.models import load_all as load_models

    info = DataInfo(height=28, width=28, channels=1, num_classes=10)
    modules = [(f"train/{n}", build_torch(spec, info)) for n, spec in load_models().items()]
    load_all()
    modules += [(f"parity/{n}", case.make_torch()) for n, case in CASES.items()]
    return [
        (name, type(m).__module__, type(m).__qualname__, m.init_args, sorted(m.state_dict()))
        for name, m in modules
        if isinstance(m, Twin) and type(m).__module__.startswith("torch_ref.")
    ]


def test_torch_ref_without_jax_or_flaxattn(tmp_path):
    twins = _registered_twins()
    assert len(twins) > 50  # every train model and nearly every parity case is a twin
    table = tmp_path / "twins.pkl"
    table.write_bytes(pickle.dumps(twins))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK + CHILD, str(table)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith(f"{len(twins)} twins"), proc.stdout


def test_torch_ref_sources_name_no_flaxattn_or_jax_import():
    # The subprocess test proves it at run time; this names the offending file directly.
    bad = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "torch_ref").rglob("*.py")
        for line in path.read_text().splitlines()
        if line.lstrip().startswith(("import ", "from "))
        and line.split()[1].split(".")[0] in ("jax", "flax", "flaxattn")
    ]
    assert bad == []
