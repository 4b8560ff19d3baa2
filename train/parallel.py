"""Processes, devices and how the train state and batches are laid out on them.

One code path from a laptop to many hosts:

- :func:`initialize` starts ``jax.distributed`` when the run has several processes
  (``--coordinator-address/--num-processes/--process-id``, or the environment, or
  cluster auto-detection with ``--distributed``), with CPU collectives over gloo;
- :class:`Parallel` holds a ``Mesh`` over every device of every process with two
  axes, ``data`` and ``fsdp``. The batch is split over both; parameters and
  optimizer state are sharded over ``fsdp`` along their largest divisible axis
  (FSDP-style, :func:`fsdp_spec`) and replicated over ``data``. ``--mesh data=N``
  (the default: every device on ``data``) is plain data parallelism.

Each process builds its slice of the global batch (``B / num_processes`` rows) and
:meth:`Parallel.put_batch` assembles the global array with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated under FSDP: sharding a bias or a norm
# scale saves nothing and costs a gather per use.
FSDP_MIN_SIZE = 1024

# The environment variables read when the flags are not given (the names JAX's
# own cluster detection and most launchers use).
ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> None:
    """Start ``jax.distributed`` for a multi-process run; no-op for one process.

    Arguments default to ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES`` and
    ``$JAX_PROCESS_ID``. With none of them set, ``auto=True`` (``--distributed``)
    lets JAX detect the cluster (SLURM, TPU pods, Open MPI...).
    """
    addr = coordinator_address or os.environ.get(ENV["coordinator_address"])
    n = num_processes if num_processes is not None else _env_int("num_processes")
    pid = process_id if process_id is not None else _env_int("process_id")
    given = {"coordinator_address": addr, "num_processes": n, "process_id": pid}
    if all(v is None for v in given.values()):
        if auto:
            _cpu_collectives()
            jax.distributed.initialize()
        return
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"a multi-process run needs --coordinator-address, --num-processes and "
            f"--process-id (or ${', $'.join(ENV.values())}); missing {missing}"
        )
    if n < 1:
        raise ValueError(f"`num_processes` (={n}) must be >= 1")
    if not 0 <= pid < n:
        raise ValueError(f"`process_id` (={pid}) must be in [0, num_processes={n})")
    if ":" not in addr:
        raise ValueError(f"`coordinator_address` (={addr!r}) must be HOST:PORT")
    if n == 1:
        return
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)


def _env_int(key: str) -> int | None:
    raw = os.environ.get(ENV[key])
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${ENV[key]} (={raw!r}) must be an integer") from None


def _cpu_collectives() -> None:
    # CPU devices of different processes talk over gloo; without it a
    # multi-process CPU run has no cross-process collectives. GPUs and TPUs
    # ignore the setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def parse_mesh(text: str | None) -> dict[str, int]:
    """``"data=2,fsdp=2"`` -> ``{"data": 2, "fsdp": 2}``; ``None`` -> ``{}`` (all on data)."""
    if not text:
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, size = part.strip().partition("=")
        if not sep or name not in AXES:
            raise ValueError(
                f"`--mesh` (={text!r}): expected AXIS=SIZE pairs with axes {list(AXES)}, "
                f"e.g. data=2,fsdp=2"
            )
        try:
            out[name] = int(size)
        except ValueError:
            raise ValueError(f"`--mesh` (={text!r}): size of {name!r} must be an integer") from None
        if out[name] < 1:
            raise ValueError(f"`--mesh` (={text!r}): size of {name!r} must be >= 1")
    return out


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Shard the largest axis of ``shape`` divisible by ``fsdp`` (ties: the last);
    replicate small arrays and those with no such axis."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return PartitionSpec()
    best = None
    for i, n in enumerate(shape):
        if n % fsdp == 0 and (best is None or n >= shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * best + ["fsdp"]))


@dataclasses.dataclass
class Parallel:
    """The device mesh (``data`` x ``fsdp``) and the layouts of state and batches."""

    mesh: Mesh

    @classmethod
    def create(cls, mesh: Mapping[str, int] | None = None, devices: int | None = None) -> Parallel:
        """A mesh over every device of every process, or the first ``devices`` local
        ones (one process only). ``mesh`` gives the axis sizes; unspecified: all on
        ``data``."""
        all_devices = jax.devices()
        if devices is not None:
            if jax.process_count() > 1:
                raise ValueError("`--devices` selects local devices; not with several processes")
            if not 1 <= devices <= len(all_devices):
                raise ValueError(
                    f"`devices` (={devices}) must be between 1 and the {len(all_devices)} available"
                )
            all_devices = all_devices[:devices]
        n = len(all_devices)
        sizes = dict(mesh or {})
        fsdp = sizes.get("fsdp", 1)
        data = sizes.get("data", n // fsdp if n % fsdp == 0 else 0)
        if data * fsdp != n:
            raise ValueError(
                f"`--mesh` sizes data={data} x fsdp={fsdp} = {data * fsdp} must equal the "
                f"{n} devices ({jax.process_count()} process(es) x "
                f"{jax.local_device_count()} local device(s))"
            )
        # jax.devices() lists each process's devices together, so each process's
        # rows of the batch are one contiguous slice of the global batch.
        grid = np.array(all_devices, dtype=object).reshape(data, fsdp)
        return cls(Mesh(grid, AXES))

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def shape(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXES))

    def state_sharding(self, tree, *, fsdp: bool = True):
        """A sharding per array leaf: FSDP over ``fsdp`` for parameters and optimizer
        state, replicated otherwise (and for ``fsdp=False``)."""
        f = self.mesh.shape["fsdp"] if fsdp else 1
        return jax.tree.map(lambda x: NamedSharding(self.mesh, fsdp_spec(np.shape(x), f)), tree)

    def put_state(self, tree, shardings):
        """Place host-built state (the same values on every process) on the mesh.

        Typed PRNG keys travel as their raw data: ``device_put`` of a key array onto
        devices of other processes is refused, while its uint32 data is not.
        """

        def put(x, sharding):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
            return jax.device_put(np.asarray(x), sharding)

        return jax.tree.map(put, tree, shardings)

    def put_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """This process's rows of the global batch -> global arrays split over the
        batch axes. With one process the rows are the whole batch."""
        if jax.process_count() == 1:
            return tuple(jax.device_put(a, self.batch) for a in arrays)
        return tuple(jax.make_array_from_process_local_data(self.batch, a) for a in arrays)

    def local_rows(self, global_rows: int) -> int:
        """Rows of a global batch that this process feeds."""
        return global_rows // jax.process_count()

    def to_host(self, tree):
        """Gather (possibly sharded, multi-process) arrays into host numpy arrays on
        every process. Every process must call it (it is a collective)."""
        gathered = jax.jit(lambda t: t, out_shardings=self.replicated)(tree)

        def host(a):
            # Typed PRNG keys (dropout streams) have no numpy form; they stay JAX arrays.
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                return a
            return np.asarray(a)

        return jax.tree.map(host, jax.device_get(gathered))
