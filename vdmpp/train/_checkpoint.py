r"""Checkpoints with orbax: the train state, the data iterator's state (JSON) and the run's config (JSON).

Each save is one orbax step directory written atomically (orbax writes to a temporary directory and
renames it once complete); the last `max_to_keep` are kept. Restoring rebuilds the state's skeleton
from the current config and fills it; a checkpoint written with a different model/loss config, or a
corrupt one, raises a clear error instead of being skipped.
"""

import json
import pathlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored (corrupt, or written by a run with a different config)."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_saveable(state: Any) -> dict[str, Any]:
    leaves = jtu.tree_leaves(eqx.filter(state, eqx.is_array))
    return {f"{i:05d}": (jr.key_data(x) if _is_key(x) else x) for i, x in enumerate(leaves)}


def _abstract(state: Any) -> dict[str, Any]:
    leaves = jtu.tree_leaves(eqx.filter(state, eqx.is_array))
    out = {}
    for i, x in enumerate(leaves):
        data = jr.key_data(x) if _is_key(x) else x
        sharding = getattr(x, "sharding", None)
        out[f"{i:05d}"] = jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    return out


def _from_saveable(like: Any, flat: dict[str, Any]) -> Any:
    arrays, static = eqx.partition(like, eqx.is_array)
    leaves, treedef = jtu.tree_flatten(arrays)
    restored = []
    for i, x in enumerate(leaves):
        value = flat[f"{i:05d}"]
        restored.append(jr.wrap_key_data(value, impl=jax.random.key_impl(x)) if _is_key(x) else value)
    return eqx.combine(jtu.tree_unflatten(treedef, restored), static)


def config_differences(saved: dict, current: dict, *, free_keys: tuple[str, ...] = ()) -> list[str]:
    """The entries where two run configs differ, outside `free_keys`, after normalising both by a JSON round trip
    (so a tuple and the list it was saved as compare equal)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    keys = sorted((set(saved) | set(current)) - set(free_keys))
    return _diff({k: saved.get(k, "<missing>") for k in keys}, {k: current.get(k, "<missing>") for k in keys})


def _diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current)):
            out += _diff(saved.get(k, "<missing>"), current.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if saved == current else [f"{prefix[:-1]}: checkpoint has {saved!r}, this run has {current!r}"]


class Checkpointer:
    """Saves and restores `(TrainState, data-iterator state, config)` under `directory`.

    Args:
        directory: where the step directories go (created if missing).
        max_to_keep: how many recent checkpoints to keep.
        free_keys: top-level config entries that may differ on restore (settings that do not change the maths,
            e.g. the output folder or the evaluation interval); every other entry must match.
    """

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3, free_keys: tuple[str, ...] = ()):
        if max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be >= 1; got {max_to_keep}.")
        self.directory = pathlib.Path(directory).absolute()
        self.free_keys = tuple(free_keys)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or `None`."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk."""
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, *, data_state: Any, config: dict) -> None:
        """Write one checkpoint atomically (blocks until it is on disk)."""
        json.dumps(data_state)  # fail before writing anything if it is not JSON
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_saveable(state)),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def read_config(self, step: int | None = None) -> dict:
        """The config JSON saved with a checkpoint."""
        step = self._resolve(step)
        try:
            return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as e:  # orbax raises many types; re-raise one clear error
            raise CheckpointError(f"Cannot read the config of checkpoint {self.directory / str(step)}: {e}") from e

    def _resolve(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"No checkpoint found in {self.directory}; run without --resume to start fresh.")
        elif step not in self.all_steps():
            raise CheckpointError(f"No checkpoint for step {step} in {self.directory}; have {self.all_steps()}.")
        return step

    def restore(self, like: Any, *, config: dict, step: int | None = None) -> tuple[Any, Any, int]:
        """Restore `(state, data_state, step)` into the skeleton `like` (built from the current config).

        Raises:
            CheckpointError: if there is no checkpoint, the saved config differs in `compare_keys`,
                the array shapes/dtypes differ, or the files cannot be read.
        """
        step = self._resolve(step)
        path = self.directory / str(step)
        saved_config = self.read_config(step)
        diffs = config_differences(saved_config, config, free_keys=self.free_keys)
        if diffs:
            raise CheckpointError(
                f"Checkpoint {path} was written by a run with a different config:\n  "
                + "\n  ".join(diffs)
                + "\nUse the same settings as that run, or a new --workdir."
            )
        target = _abstract(like)
        try:
            meta = self._manager.item_metadata(step).state
            stored = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in meta.items()}
        except Exception as e:
            raise CheckpointError(f"Checkpoint {path} is corrupt or unreadable (metadata): {e}") from e
        wanted = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in target.items()}
        if stored != wanted:
            bad = [
                f"leaf {k}: checkpoint {stored.get(k)}, this run {wanted.get(k)}"
                for k in sorted(set(stored) | set(wanted))
                if stored.get(k) != wanted.get(k)
            ]
            raise CheckpointError(
                f"Checkpoint {path} does not match this run's state structure ({len(bad)} differences, e.g. "
                + "; ".join(bad[:3])
                + "). It was written by a different model or optimiser; use a new --workdir."
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
            )
        except Exception as e:
            raise CheckpointError(f"Checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
        return _from_saveable(like, restored["state"]), restored["data"], step

    def close(self) -> None:
        """Finish pending writes and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
