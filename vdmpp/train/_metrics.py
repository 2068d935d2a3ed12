"""Run outputs: JSONL + TensorBoard metrics, atomic file writes, PNG grids and plots."""

import io
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._io import atomic_write_bytes


def save_figure(fig: Any, path: str | pathlib.Path) -> None:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def image_grid(images: np.ndarray, num_levels: int, ncols: int | None = None, scale: int = 4) -> np.ndarray:
    """Tile integer images `(n, H, W, C)` in `{0..L-1}` into one uint8 image, upscaled by `scale`."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be shaped (n, H, W, C); got {images.shape}.")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    pix = np.round(images.astype(np.float64) * 255.0 / (num_levels - 1)).astype(np.uint8)
    grid = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), 128, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pix[i]
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid[..., 0] if c == 1 else grid


def save_png(array: np.ndarray, path: str | pathlib.Path) -> None:
    """Save a uint8 image array as PNG, atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


class MetricsLogger:
    """Appends metrics to `workdir/metrics.jsonl` (one flushed line per record) and TensorBoard events.

    On resume, records after the restored step (and a line cut by a kill) are dropped, so the file
    reads as if the run had never stopped.

    Args:
        workdir: run folder.
        resume_step: the step the run continues from (`None` for a fresh run, which truncates the file).
        tensorboard: also write TensorBoard event files under `workdir/tb`.
        enabled: `False` on non-zero processes of a multi-host run.
    """

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int | None, tensorboard: bool = True, enabled=True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self.records: list[dict] = []
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec.get("step", 0) <= resume_step:
                    self.records.append(rec)
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        self._file = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"), purge_step=resume_step)

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        """Record `values` at `step` under `kind` ("train" or "eval")."""
        if not self.enabled:
            return
        rec = {"step": int(step), "kind": kind, **{k: float(v) for k, v in values.items()}}
        self.records.append(rec)
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

    def series(self, name: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of one metric."""
        pts = [(r["step"], r[name]) for r in self.records if r.get("kind") == kind and name in r]
        if not pts:
            return np.zeros(0), np.zeros(0)
        s, v = zip(*pts)
        return np.asarray(s), np.asarray(v)

    def close(self) -> None:
        """Flush and close the files."""
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def run_plots(workdir: pathlib.Path, logger: "MetricsLogger", density: Any) -> list[str]:
    """Write the loss curve, the test bits/dim curve and (`density` = (schedule, weighting)) p(λ) beside w(λ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    s, v = logger.series("loss", "train")
    if len(s):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(s, v, lw=1)
        ax.set(xlabel="step", ylabel="training loss (mean per example)", yscale="log", title="loss curve")
        save_figure(fig, workdir / "loss_curve.png")
        written.append("loss_curve.png")
    s, v = logger.series("test_bpd", "eval")
    if len(s):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(s, v, "o-")
        ax.set(xlabel="step", ylabel="test bits/dim (EMA, -ELBO)", title="test bits/dim")
        save_figure(fig, workdir / "bpd_curve.png")
        written.append("bpd_curve.png")
    if density is not None:
        sched, weighting = density
        lam = np.linspace(float(sched.lam_min), float(sched.lam_max), 801)
        dens = np.asarray(jax.vmap(sched.density)(jnp.asarray(lam, jnp.float32)))
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(lam, dens, label="p(λ) of the noise schedule")
        w = np.asarray(jax.vmap(weighting)(jnp.asarray(lam, jnp.float32)))
        ax.plot(lam, w / np.trapezoid(w, lam), "--", label="w(λ) (normalised)")
        ax.set(xlabel="λ (log-SNR)", ylabel="density", title="noise schedule")
        ax.legend()
        save_figure(fig, workdir / "p_lambda.png")
        written.append("p_lambda.png")
    return written
