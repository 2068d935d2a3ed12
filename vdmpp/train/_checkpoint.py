r"""Checkpoints with orbax: the train state, the data iterator's state (JSON) and the run's config (JSON).

Each save is one orbax step directory written atomically (orbax writes to a temporary directory and
renames it once complete); the last `max_to_keep` are kept. Restoring rebuilds the state's skeleton
from the current config and fills it; a checkpoint written with a different model/loss config, or a
damaged one (unreadable, or its step folder replaced by a file), raises a clear error naming the step, the
folder and what to do instead of being skipped: an older step is restored only when asked for (`step=`).
Unfinished saves (orbax's `*.orbax-checkpoint-tmp*` folders, from a run killed while saving) are not
checkpoints and are removed when the next run opens the folder.
"""

import contextlib
import gc
import json
import pathlib
import shutil
import sys
import traceback
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be saved or restored (damaged, missing, or written by a run with a different config)."""


def _short(e: BaseException, limit: int = 300) -> str:
    """The first line of an orbax/TensorStore error, without its spec dump."""
    text = str(e).split("See full TensorStore details")[0].strip()
    first = (text.splitlines() or [""])[0].strip().rstrip(".:")
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _orphaned_read(report: Any) -> bool:
    """An "exception ignored" report of a read that a failed orbax restore left running (not worth a page)."""
    exc = report.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":  # a TensorStore callback, too late
        return True
    code = getattr(report.object, "cr_code", None)  # a coroutine of the failed restore, collected
    return code is not None and "orbax" in code.co_filename


def _drop_orphaned_read_reports() -> None:
    """Install (once) a `sys.unraisablehook` filter that drops `_orphaned_read` reports and passes on the rest."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orphaned_reads", False):
        return

    def hook(report: Any) -> None:
        if not _orphaned_read(report):
            previous(report)

    hook._drops_orphaned_reads = True  # pyright: ignore[reportFunctionMemberAccess]
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_failure():
    """Re-raise orbax failures, keeping the reads they leave running from printing pages when they end.

    A failed read leaves the other reads of the same restore running: their TensorStore callbacks find the event
    loop closed, and their coroutines, collected later (at interpreter exit at the latest), each print a report
    with a TensorStore dump. Those reports are dropped (`Checkpointer` installs the filter), and the frames are
    cleared so the coroutines are collected now.
    """
    try:
        yield
    except Exception as e:
        traceback.clear_frames(e.__traceback__)
        gc.collect()
        raise


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
        _drop_orphaned_read_reports()  # before any restore: a failed one reports from other threads at once
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
        """The newest complete checkpoint's step, or `None` (see `damaged_steps` for entries that are not)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk."""
        return sorted(self._manager.all_steps())

    def damaged_steps(self) -> dict[int, str]:
        """Step-named entries of the folder that are not checkpoints (e.g. a step folder replaced by a file)."""
        good = set(self._manager.all_steps())
        out = {}
        for p in self.directory.iterdir() if self.directory.is_dir() else ():
            if p.name.isdigit() and int(p.name) not in good:
                out[int(p.name)] = "a file, not a checkpoint folder" if p.is_file() else "not a complete checkpoint"
        return out

    def save(self, step: int, state: Any, *, data_state: Any, config: dict) -> None:
        """Write one checkpoint atomically (blocks until it is on disk).

        Raises:
            CheckpointError: if the write fails (the checkpoints already on disk stay intact).
        """
        json.dumps(data_state)  # fail before writing anything if it is not JSON
        try:
            with _quiet_failure():
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
        except Exception as e:
            raise CheckpointError(
                f"Saving checkpoint step {step} in {self.directory} failed ({_short(e)}). Check the free disk space "
                f"and that no other program writes to {self.directory}; the checkpoints already there are intact."
            ) from e

    def read_config(self, step: int | None = None) -> dict:
        """The config JSON saved with a checkpoint."""
        step = self._resolve(step)
        try:
            with _quiet_failure():
                return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as e:  # orbax raises many types; re-raise one clear error
            raise self._damaged(step, f"its config cannot be read ({_short(e)})") from e

    def _damaged(self, step: int, why: str) -> CheckpointError:
        older = [s for s in self.all_steps() if s < step]
        if older:
            fix = (
                f"Resume from an older one with --resume-from {older[-1]} (complete steps on disk: "
                f"{', '.join(map(str, older))}); the newer ones are then discarded."
            )
        else:
            fix = "No older checkpoint is left: start afresh with --overwrite, or choose another --workdir."
        return CheckpointError(f"Checkpoint step {step} ({self.directory / str(step)}) is damaged: {why}. {fix}")

    def _resolve(self, step: int | None) -> int:
        damaged = self.damaged_steps()
        steps = self.all_steps()
        if step is None:
            if not steps and not damaged:
                raise CheckpointError(f"No checkpoint found in {self.directory}; run without --resume to start fresh.")
            step = max(steps + list(damaged))
        elif step not in steps and step not in damaged:
            have = ", ".join(map(str, steps)) or "none"
            raise CheckpointError(f"No checkpoint for step {step} in {self.directory}; complete steps on disk: {have}.")
        if step in damaged:
            raise self._damaged(step, damaged[step])
        return step

    def discard_after(self, step: int) -> list[int]:
        """Delete every checkpoint (complete or damaged) newer than `step`; returns their steps."""
        newer = sorted({s for s in self.all_steps() + list(self.damaged_steps()) if s > step})
        for s in newer:
            path = self.directory / str(s)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self._manager.reload()
        return newer

    def restore(self, like: Any, *, config: dict, step: int | None = None) -> tuple[Any, Any, int]:
        """Restore `(state, data_state, step)` into the skeleton `like` (built from the current config).

        Args:
            like: a state of the right structure (its arrays give shapes, dtypes and shardings).
            config: the current run's config record (compared with the saved one outside `free_keys`).
            step: the checkpoint to restore; `None` for the newest entry, which is an error when it is damaged
                (never skipped for an older one).

        Raises:
            CheckpointError: if there is no such checkpoint, it is damaged (unreadable, or its folder replaced by a
                file), its saved config differs outside `free_keys`, or its array shapes/dtypes differ.
        """
        step = self._resolve(step)
        path = self.directory / str(step)
        saved_config = self.read_config(step)
        diffs = config_differences(saved_config, config, free_keys=self.free_keys)
        if diffs:
            raise CheckpointError(
                f"Checkpoint step {step} ({path}) was written by a run with a different config:\n  "
                + "\n  ".join(diffs)
                + "\nUse the same settings as that run, --overwrite to start afresh here, or a new --workdir."
            )
        target = _abstract(like)
        try:
            with _quiet_failure():
                meta = self._manager.item_metadata(step).state
                stored = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in meta.items()}
        except Exception as e:
            raise self._damaged(step, f"its array metadata cannot be read ({_short(e)})") from e
        wanted = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in target.items()}
        if stored != wanted:
            bad = [
                f"leaf {k}: checkpoint {stored.get(k)}, this run {wanted.get(k)}"
                for k in sorted(set(stored) | set(wanted))
                if stored.get(k) != wanted.get(k)
            ]
            raise CheckpointError(
                f"Checkpoint step {step} ({path}) does not match this run's state structure ({len(bad)} "
                "differences, e.g. " + "; ".join(bad[:3]) + "). It was written by a different model or optimiser; "
                "use a new --workdir."
            )
        try:
            with _quiet_failure():
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
                )
        except Exception as e:
            raise self._damaged(step, f"its arrays cannot be read ({_short(e)})") from e
        return _from_saveable(like, restored["state"]), restored["data"], step

    def close(self) -> None:
        """Finish pending writes and release the manager (a failed write was already reported by `save`)."""
        with contextlib.suppress(Exception), _quiet_failure():
            self._manager.wait_until_finished()
            self._manager.close()
