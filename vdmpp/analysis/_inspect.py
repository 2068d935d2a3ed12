r""" "What am I actually training?": a schedule + weighting + parameterisation as one weighting $w(\lambda)$.

A loss $\tfrac12 E_{t,\epsilon}[(w/p)\,\|\epsilon - \hat\epsilon\|^2]$ (K&G eq. 7) can be written for any
parameterisation $P$ because $\|\epsilon - \hat\epsilon\|^2 = r_P(\lambda)\,\|P - \hat P\|^2$ (K&G eq. 122–126):
$r_\epsilon = 1$, $r_x = e^\lambda$, $r_v = \mathrm{sigmoid}(\lambda)$,
$r_F = \mathrm{sigmoid}(\lambda + 2\log\tilde\sigma_{data})$, $r_{score} = \sigma^2 = \mathrm{sigmoid}(-\lambda)$,
$r_o = \mathrm{sigmoid}(\lambda/2)^2$ (flow matching). Conversely, the plain MSE $E_t\|P - \hat P\|^2$ under a
schedule with density $p$ is the weighted loss with $w(\lambda) = 2p(\lambda)/r_P(\lambda)$.
"""

import io

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._misc import check_instance
from ..process import (
    AbstractParameterisation,
    EpsPrediction,
    FPrediction,
    OPrediction,
    ScorePrediction,
    VPrediction,
    XPrediction,
)
from ..schedules import AbstractSchedule
from ..weighting import AbstractWeighting


def mse_ratio(parameterisation: AbstractParameterisation, lam) -> np.ndarray:
    r"""$r_P(\lambda) = \|\epsilon - \hat\epsilon\|^2 / \|P - \hat P\|^2$ for the VP process (K&G eq. 122–126).

    The parameterisation's own `mse_ratio`, as float64 NumPy.
    """
    return np.asarray(parameterisation.mse_ratio(lam), np.float64)


ALL_PARAMETERISATIONS: tuple[AbstractParameterisation, ...] = (
    EpsPrediction(),
    XPrediction(),
    VPrediction(),
    FPrediction(),
    ScorePrediction(),
    OPrediction(),
)


class ObjectiveReport(eqx.Module):
    r"""What a training objective amounts to, on a $\lambda$ grid (float64 NumPy arrays).

    Attributes:
        lam: the log-SNR grid (inside the schedule's support).
        weight: the weighting $w(\lambda)$ of the weighted loss (K&G eq. 5).
        density: the schedule's $p(\lambda)$.
        importance: $w(\lambda)/p(\lambda)$, the factor on $\tfrac12\|\epsilon - \hat\epsilon\|^2$ per sampled $t$.
        monotonic: whether $w$ is non-increasing on the grid (then $L_w$ is an ELBO of noise-augmented data).
        mse_weights: for each parameterisation's name, the factor $\tfrac12 (w/p)\,r_P$ on $\|P - \hat P\|^2$
            per sampled $t$: the same loss written as a weighted MSE of that parameterisation.
    """

    lam: np.ndarray
    weight: np.ndarray
    density: np.ndarray
    importance: np.ndarray
    monotonic: bool = eqx.field(static=True)
    mse_weights: dict

    def table(self, num_rows: int = 9) -> str:
        """The report as a Markdown table on `num_rows` evenly spaced grid points."""
        idx = np.unique(np.linspace(0, self.lam.size - 1, num_rows).round().astype(int))
        names = list(self.mse_weights)
        out = io.StringIO()
        head = ["λ", "w(λ)", "p(λ)", "w/p"] + [f"MSE weight ({n})" for n in names]
        out.write("| " + " | ".join(head) + " |\n")
        out.write("|" + "---|" * len(head) + "\n")
        for i in idx:
            row = [self.lam[i], self.weight[i], self.density[i], self.importance[i]]
            row += [self.mse_weights[n][i] for n in names]
            out.write("| " + " | ".join(f"{v:.4g}" for v in row) + " |\n")
        out.write(f"\nmonotonic (non-increasing) w: {self.monotonic}\n")
        return out.getvalue()

    def plot(self, path=None):
        """Plot $w$, $p$, $w/p$ and the per-parameterisation MSE weights; save to `path` if given.

        Returns the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        ax = axes[0]
        ax.plot(self.lam, self.weight / self.weight.max(), label="w(λ) (max 1)")
        ax.plot(self.lam, self.density / self.density.max(), label="p(λ) (max 1)")
        ax.plot(self.lam, self.importance / self.importance.max(), "--", label="w/p (max 1)")
        ax.set_xlabel("λ (log SNR)")
        ax.set_title(f"weighting (monotonic: {self.monotonic})")
        ax.legend()
        ax = axes[1]
        for name, m in self.mse_weights.items():
            ax.semilogy(self.lam, m, label=name)
        ax.set_xlabel("λ (log SNR)")
        ax.set_title("factor on ‖P − P̂‖² per sampled t")
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig


def _name(p: AbstractParameterisation) -> str:
    return type(p).__name__.removesuffix("Prediction").lower()


def inspect_objective(
    schedule: AbstractSchedule,
    weighting: AbstractWeighting | None = None,
    parameterisation: AbstractParameterisation = EpsPrediction(),
    *,
    lam=None,
    num: int = 401,
) -> ObjectiveReport:
    r"""Describe the objective "sample $t \sim U(0,1)$ through `schedule`, weight by `weighting`".

    With a `weighting`, the objective is the weighted loss $L_w$ (K&G eq. 5); `parameterisation` only
    says what the network predicts and the report lists the equivalent MSE weights. With
    `weighting=None`, the objective is the plain MSE $E_t\|P - \hat P\|^2$ of `parameterisation`
    (e.g. v-prediction with the cosine schedule), and the report gives its implied
    $w(\lambda) = 2p(\lambda)/r_P(\lambda)$.

    Args:
        schedule: the noise schedule (its density $p(\lambda)$ is the importance sampler).
        weighting: $w(\lambda)$, or `None` for the plain MSE of `parameterisation`.
        parameterisation: what the network predicts (`vdmpp.process.VPrediction()` etc.).
        lam: optional grid; defaults to `num` points on the schedule's support clipped to $[-15, 15]$.
        num: grid size when `lam` is not given.

    Returns:
        An `ObjectiveReport` (use `.table()` and `.plot()`).
    """
    check_instance(schedule, AbstractSchedule, "schedule", "vd.schedules.Cosine()")
    if weighting is not None:
        check_instance(weighting, AbstractWeighting, "weighting", "vd.weighting.Sigmoid(2.0)")
    check_instance(parameterisation, AbstractParameterisation, "parameterisation", "vd.process.VPrediction()")
    if lam is None:
        lo, hi = max(float(schedule.lam_min), -15.0), min(float(schedule.lam_max), 15.0)
        grid = np.linspace(lo, hi, num)
    else:
        grid = np.asarray(lam, dtype=np.float64)
        if grid.ndim != 1 or grid.size < 2:
            raise ValueError(f"`lam` must be a 1-D grid with at least 2 points; got shape {grid.shape}.")
        if grid.min() < schedule.lam_min or grid.max() > schedule.lam_max:
            raise ValueError(
                f"`lam` must lie in the schedule's support [{schedule.lam_min}, {schedule.lam_max}]; "
                f"got [{grid.min()}, {grid.max()}]."
            )
    density = np.asarray(schedule.density(jnp.asarray(grid)), dtype=np.float64)
    if weighting is None:
        weight = 2.0 * density / mse_ratio(parameterisation, grid)
    else:
        weight = np.asarray(weighting(jnp.asarray(grid)), dtype=np.float64)
    importance = weight / density
    logw = np.log(np.maximum(weight, np.finfo(np.float64).tiny))
    monotonic = bool(np.all(np.diff(logw) <= 1e-6))
    mse = {_name(p): 0.5 * importance * mse_ratio(p, grid) for p in ALL_PARAMETERISATIONS}
    return ObjectiveReport(
        lam=grid, weight=weight, density=density, importance=importance, monotonic=monotonic, mse_weights=mse
    )
