r"""Post-hoc EMA snapshots on disk and the reconstruction of any $\sigma_{rel}$ from them (THEORY §13).

Format (version 1): one `.npz` file per snapshot step, `WORKDIR/ema_snapshots/STEP.npz` (the step zero-padded
to 10 digits), written atomically by process 0 and never pruned. It holds `meta`, a UTF-8 JSON object
(`format` = "vdmpp.ema_snapshot/1", `step`, `sigma_rels`, `gammas`, `num_leaves`), and for profile `i` and leaf
`j` the array `p{i}_{j:05d}`: the float32 trainable leaves of the model (`eqx.filter(model,
eqx.is_inexact_array)`) in `jax.tree_util` order.
"""

import io
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._misc import check_positive_int
from ._metrics import atomic_write_bytes
from ._posthoc import posthoc_coefficients, PostHocEMA, SIGMA_REL_MAX
from ._sharding import replicate_to_host


FORMAT = "vdmpp.ema_snapshot/1"
SNAPSHOT_DIR = "ema_snapshots"


class EMASnapshot(eqx.Module):
    """One tracked power-function EMA at one step.

    Attributes:
        step: the training step it was taken at.
        sigma_rel: the relative width of its profile.
        params: its trainable leaves (a list of NumPy arrays in `jax.tree_util` order, or any pytree).
    """

    step: int = eqx.field(static=True)
    sigma_rel: float = eqx.field(static=True)
    params: Any


def save_ema_snapshot(
    directory: str | pathlib.Path, step: int, posthoc: PostHocEMA, phema: Sequence[Any]
) -> pathlib.Path:
    """Write the post-hoc EMAs `phema` (host arrays, one pytree per profile of `posthoc`) taken at `step`."""
    leaves = [[np.asarray(x) for x in jtu.tree_leaves(p)] for p in phema]
    if len(leaves) != len(posthoc.sigma_rels):
        raise ValueError(f"`phema` has {len(leaves)} profiles; `posthoc` tracks {len(posthoc.sigma_rels)}.")
    meta = {
        "format": FORMAT,
        "step": int(step),
        "sigma_rels": list(posthoc.sigma_rels),
        "gammas": list(posthoc.gammas),
        "num_leaves": len(leaves[0]),
    }
    arrays: dict[str, Any] = {f"p{i}_{j:05d}": x for i, ls in enumerate(leaves) for j, x in enumerate(ls)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = pathlib.Path(directory) / f"{int(step):010d}.npz"
    atomic_write_bytes(path, buf.getvalue())
    return path


def _read(path: pathlib.Path) -> list[EMASnapshot]:
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(bytes(f["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            n = int(meta["num_leaves"])
            return [
                EMASnapshot(int(meta["step"]), float(s), [f[f"p{i}_{j:05d}"] for j in range(n)])
                for i, s in enumerate(meta["sigma_rels"])
            ]
    except Exception as e:  # zip, JSON and key errors alike: one clear message naming the file
        raise ValueError(
            f"{path} is not a readable vdmpp post-hoc EMA snapshot ({type(e).__name__}: {e}). Snapshots are "
            f"written by the training loop into WORKDIR/{SNAPSHOT_DIR}/; remove or replace this file."
        ) from e


def load_ema_snapshots(directory: str | pathlib.Path) -> list[EMASnapshot]:
    """Every snapshot in `directory` (e.g. `WORKDIR/ema_snapshots`), sorted by step and then $\\sigma_{rel}$.

    Raises:
        FileNotFoundError: no such folder, or no snapshot in it.
        ValueError: a file that is not a snapshot, or snapshots of models with different leaves.
    """
    directory = pathlib.Path(directory)
    files = sorted(directory.glob("*.npz")) if directory.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"No post-hoc EMA snapshots (*.npz) in {directory}. Train with post-hoc EMA on (--posthoc-sigma-rels, "
            "--snapshot-every) so the loop writes WORKDIR/ema_snapshots/."
        )
    snaps = [s for f in files for s in _read(f)]
    shapes = [(x.shape, x.dtype) for x in snaps[0].params]
    for s in snaps:
        if [(x.shape, x.dtype) for x in s.params] != shapes:
            raise ValueError(
                f"The snapshots in {directory} hold different models (step {snaps[0].step} and step {s.step} "
                "differ in their parameter shapes); keep one run's snapshots per folder."
            )
    return sorted(snaps, key=lambda s: (s.step, s.sigma_rel))


def _representable(steps, sigma_rels, step: int, max_residual: float) -> tuple[float, float] | None:
    """The range of sigma_rel the snapshots fit within `max_residual` at `step` (on a grid)."""
    grid = np.geomspace(0.003, SIGMA_REL_MAX * 0.999, 120)
    ok = [float(s) for s in grid if posthoc_coefficients(steps, sigma_rels, step, float(s))[1] <= max_residual]
    return (min(ok), max(ok)) if ok else None


def reconstruct_ema(
    snapshots: Sequence[EMASnapshot],
    sigma_rel: float,
    step: int | None = None,
    *,
    like: Any = None,
    max_residual: float = 0.25,
) -> Any:
    r"""The power-function EMA of width `sigma_rel` at `step`, combined from snapshots (EDM2 App. C.3).

    Uses the snapshots taken at or before `step`: their coefficients solve the least-squares fit of the target
    profile with the closed-form inner products (`posthoc_coefficients`), and the result is
    $\sum_i x_i\hat\theta_i$ (in float64, returned in the snapshots' dtype).

    Args:
        snapshots: from `load_ema_snapshots` (or any `EMASnapshot`s of one model).
        sigma_rel: the relative width wanted.
        step: the step wanted (default: the newest snapshot's).
        like: optional model (or pytree) whose inexact-array leaves are replaced by the reconstruction, in
            order (e.g. the network built from the run's config); `None` returns the leaves' container as
            stored in the snapshots.
        max_residual: refuse a fit whose relative $L^2$ profile residual exceeds this.

    Raises:
        ValueError: no snapshots at or before `step`, or `sigma_rel` that the snapshots cannot represent (the
            message gives the residual and the range they can represent), or `like` with other leaves.
    """
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("`snapshots` is empty; load them with vd.train.load_ema_snapshots(WORKDIR/ema_snapshots).")
    newest = max(s.step for s in snapshots)
    step = newest if step is None else int(step)
    used = [s for s in snapshots if 1 <= s.step <= step]
    if not used:
        raise ValueError(f"`step`={step}: no snapshot was taken at or before it (the first is at step "
                         f"{min(s.step for s in snapshots)}).")  # fmt: skip
    steps, widths = [s.step for s in used], [s.sigma_rel for s in used]
    x, residual = posthoc_coefficients(steps, widths, step, sigma_rel)
    if not residual <= max_residual:
        span = _representable(steps, widths, step, max_residual)
        where = "none" if span is None else f"about [{span[0]:.3f}, {span[1]:.3f}]"
        raise ValueError(
            f"`sigma_rel`={sigma_rel} at step {step} cannot be represented by these snapshots (tracked "
            f"sigma_rel {sorted(set(widths))} at {len(set(steps))} steps): the best combination of their profiles "
            f"leaves a relative L2 residual of {residual:.3f} (limit `max_residual`={max_residual}). They represent "
            f"sigma_rel in {where}; choose one in that range, or snapshot more often (--snapshot-every)."
        )
    leaves = [jtu.tree_leaves(s.params) for s in used]
    out = []
    for j in range(len(leaves[0])):
        acc = np.zeros(np.shape(leaves[0][j]), np.float64)
        for c, ls in zip(x, leaves):
            acc += float(c) * np.asarray(ls[j], np.float64)
        out.append(acc.astype(np.asarray(leaves[0][j]).dtype))
    if like is None:
        return jtu.tree_unflatten(jtu.tree_structure(used[0].params), out)
    trainable, rest = eqx.partition(like, eqx.is_inexact_array)
    old, treedef = jtu.tree_flatten(trainable)
    if [np.shape(a) for a in old] != [a.shape for a in out]:
        raise ValueError(
            f"`like` has {len(old)} trainable leaves that do not match the snapshots' {len(out)} "
            "(a different model); build it from the run's config."
        )
    return eqx.combine(jtu.tree_unflatten(treedef, [jnp.asarray(a) for a in out]), rest)


def check_posthoc_settings(sigma_rels: tuple[float, ...], snapshot_every: int) -> None:
    """Validate the loop's post-hoc EMA settings (before any work starts)."""
    if not isinstance(sigma_rels, tuple):
        raise TypeError(f"`posthoc_sigma_rels` must be a tuple of floats (empty: off); got {sigma_rels!r}.")
    check_positive_int(snapshot_every, "snapshot_every")
    if sigma_rels:
        PostHocEMA(tuple(float(s) for s in sigma_rels))


def posthoc_of(sigma_rels: tuple[float, ...]) -> PostHocEMA | None:
    """The `PostHocEMA` of the loop's setting (`None` when empty)."""
    return PostHocEMA(tuple(float(s) for s in sigma_rels)) if sigma_rels else None


def write_state_snapshot(workdir: str | pathlib.Path, step: int, state: Any, posthoc: PostHocEMA) -> None:
    """Fetch the state's post-hoc EMAs (a collective: every process calls it); process 0 writes the snapshot."""
    host = replicate_to_host(state.phema)
    if jax.process_index() == 0:
        save_ema_snapshot(pathlib.Path(workdir) / SNAPSHOT_DIR, step, posthoc, host)
