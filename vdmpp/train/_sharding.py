r"""Device layout: a `jax.sharding.Mesh` with a `data` axis and an optional `fsdp` axis.

The batch is split over both axes (every device sees a different slice of the global batch);
the train state is replicated, except that with `fsdp > 1` large arrays (parameters, Adam moments,
EMA) are split along one of their dimensions over the `fsdp` axis. XLA inserts the collectives
(GSPMD), so the step's code is the same for every layout. Multi-host: call
`jax.distributed.initialize()` first; each process feeds its own slice of the batch
(`shard_batch` assembles the global array from the process-local pieces).
"""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P


DATA_AXES = ("data", "fsdp")


def make_mesh(fsdp: int = 1, devices: Any = None) -> Mesh:
    """A 2-D mesh `(data, fsdp)` over `devices` (default: every device of every process).

    Raises:
        ValueError: if `fsdp` does not divide the number of devices.
    """
    devs = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    if not isinstance(fsdp, int) or fsdp < 1 or len(devs) % fsdp:
        raise ValueError(
            f"`fsdp` must be a positive divisor of the number of devices ({len(devs)}); got {fsdp!r}. "
            "Use fsdp=1 for pure data parallelism."
        )
    return Mesh(devs.reshape(len(devs) // fsdp, fsdp), DATA_AXES)


class Sharding(eqx.Module):
    """How the batch and the train state are laid out on a mesh.

    Args:
        mesh: a mesh with axes `("data", "fsdp")` (see `make_mesh`). A `jax.sharding.AbstractMesh` of any size
            answers layout questions without devices (`leaf`, `state_shardings`, e.g. for capacity planning:
            `leaf(x).shard_shape(x.shape)`), but cannot place arrays.
        fsdp_min_size: arrays with fewer elements stay replicated even when `fsdp > 1`.
    """

    mesh: Mesh | AbstractMesh = eqx.field(static=True)
    fsdp_min_size: int = eqx.field(static=True, default=2**14)

    def __check_init__(self):
        if tuple(self.mesh.axis_names) != DATA_AXES:
            raise ValueError(
                f"`mesh` must have axes {DATA_AXES}; got {self.mesh.axis_names}. Build it with make_mesh()."
            )

    @property
    def num_batch_shards(self) -> int:
        """The number of slices the global batch is split into (all devices)."""
        return self.mesh.size

    @property
    def batch(self) -> NamedSharding:
        """Sharding of a batch: leading axis split over every device."""
        return NamedSharding(self.mesh, P(DATA_AXES))

    def leaf(self, x: Any) -> NamedSharding:
        """Sharding of one state leaf: replicated, or split over `fsdp` on its largest divisible dimension."""
        k = self.mesh.shape["fsdp"]
        shape = getattr(x, "shape", ())
        if k > 1 and math.prod(shape) >= self.fsdp_min_size:
            dims = sorted(range(len(shape)), key=lambda d: -shape[d])
            for d in dims:
                if shape[d] % k == 0:
                    spec: list[str | None] = [None] * len(shape)
                    spec[d] = "fsdp"
                    return NamedSharding(self.mesh, P(*spec))
        return NamedSharding(self.mesh, P())

    def state_shardings(self, state: Any) -> Any:
        """A pytree of shardings matching the array leaves of `state` (`None` elsewhere)."""
        return jtu.tree_map(lambda x: self.leaf(x) if eqx.is_array(x) else None, state)

    def shard_state(self, state: Any) -> Any:
        """Place `state` on the mesh (replicated / FSDP-split).

        With several processes, host-local leaves must hold the same value on every process (they do
        when built from the same seed or restored from the same checkpoint).
        """
        arrays, static = eqx.partition(state, eqx.is_array)
        placed = jtu.tree_map(lambda x: _place(x, self.leaf(x)), arrays)
        return eqx.combine(placed, static)

    def constrain(self, state: Any) -> Any:
        """Inside jit: keep `state` in the layout `shard_state` gives it."""
        arrays, static = eqx.partition(state, eqx.is_array)
        placed = jtu.tree_map(lambda x: jax.lax.with_sharding_constraint(x, self.leaf(x)), arrays)
        return eqx.combine(placed, static)

    def replicate(self, x: Any) -> jax.Array:
        """A host array (the same on every process) as a replicated global array on the mesh."""
        return _place(np.asarray(x), NamedSharding(self.mesh, P()))

    def shard_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """Turn this process's slice of the batch (NumPy) into a global array sharded over all devices.

        Raises:
            ValueError: if the global batch is not divisible by the number of devices.
        """
        out = {}
        for name, x in batch.items():
            x = np.asarray(x)
            global_n = x.shape[0] * jax.process_count()
            if global_n % self.num_batch_shards:
                raise ValueError(
                    f"The global batch size ({global_n}) must be divisible by the number of devices "
                    f"({self.num_batch_shards}); got a batch of {x.shape[0]} per process for `{name}`."
                )
            if jax.process_count() == 1:
                out[name] = jax.device_put(x, self.batch)
            else:
                out[name] = jax.make_array_from_process_local_data(self.batch, x)
        return out


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: reshard on device
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate_to_host(tree: Any) -> Any:
    """Fetch a (possibly sharded, multi-host) pytree's arrays to NumPy on every process."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if eqx.is_array(x) and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    return jtu.tree_map(fetch, tree)
