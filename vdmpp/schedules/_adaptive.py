r"""The adaptive piecewise-linear noise schedule (K&G §3.2, App. F, H; THEORY §5).

$[\lambda_{min}, \lambda_{max}]$ is split into `num_bins` equal-width bins. Each bin keeps an
exponential moving average (EMA) of the per-example target $w(\lambda)\|\epsilon - \hat\epsilon\|^2$
for the $\lambda$'s that fell into it, and the noise-level density is piecewise constant,
$p(\lambda) \propto \mathrm{EMA}_k$ on bin $k$. Its CDF (counted from $\lambda_{max}$, so that
$t = 0$ at $\lambda_{max}$) is piecewise linear with knots at the bin edges, and so is its inverse
$t \mapsto \lambda$; both are computed exactly.

The schedule object `AdaptiveSchedule` holds configuration only; the statistics live in a separate
pytree, `AdaptiveState` (one float array), threaded explicitly:

    a = AdaptiveSchedule(lam_min=-20.0, lam_max=20.0)
    state = a.init()
    loss, aux = vdmpp.losses.weighted_loss(denoiser, x, key=key, schedule=a.bind(state),
                                           weighting=w, return_aux=True)
    state = a.update(state, aux.lam, aux.values)

`a.bind(state)` is an ordinary `vdmpp.schedules.AbstractSchedule`, so every function that takes a
schedule (losses, samplers) takes the adaptive one; `weighted_loss` then uses the importance weights
$w(\lambda)/p(\lambda)$ (K&G eq. 7) and stays unbiased for any state.

**Floor.** Before normalising, each bin's EMA is raised to at least `floor` times the mean EMA over
bins (default `1e-3`). Every bin then has probability at least $\text{floor}/(K(1 + \text{floor}))$, i.e.
its density is at least $\text{floor}/(1 + \text{floor})$ times the uniform density, so the inverse CDF
stays strictly decreasing, the importance weights $w/p$ stay bounded, and a bin whose EMA has decayed
towards 0 is still sampled now and then (and so can recover). If every EMA is 0 the density is uniform.

**Moment.** With `moment=1` (default, K&G's rule) the EMA tracks $E[v \mid \text{bin}]$ and
$p \propto$ EMA, which makes $(w/p)E\|\epsilon - \hat\epsilon\|^2$ flat across bins. That minimises the
estimator's variance only when the relative spread of $v$ is the same in every bin. With `moment=2`
the EMA tracks $E[v^2 \mid \text{bin}]$ and $p \propto \sqrt{\mathrm{EMA}}$: for a piecewise-constant density
the variance of the importance-weighted estimate, $\sum_k h\,\overline{v^2}_k / (4 p_k) - L^2$, is minimised
exactly by $p_k \propto \sqrt{\overline{v^2}_k}$ (Cauchy–Schwarz), which matters when $v$ is heavy-tailed in
some bins (e.g. the Bayes-optimal denoiser of a small data set near posterior collapse).

**Update rule** (count-aware EMA): a bin hit $n \ge 1$ times in a batch becomes
$r^n\,\mathrm{old} + (1 - r^n)\,\bar v$, $\bar v$ the mean of its $n$ targets ($v^{\text{moment}}$), $r$ the
decay; bins not hit are unchanged. Targets that are not finite or negative (and $\lambda$'s that are not finite) are
**ignored**: masked out of both the per-bin sums and the counts, so they can never poison the state
with NaN. $\lambda$'s outside $[\lambda_{min}, \lambda_{max}]$ (rounding at the ends) count towards
the nearest end bin.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._misc import as_float
from .._types import Array, ArrayLike, Float, FloatLike
from ._base import AbstractNoiseSchedule, AbstractSchedule


class AdaptiveState(eqx.Module):
    """The adaptive schedule's statistics: one EMA per bin (a plain pytree of arrays; checkpoints with orbax).

    Attributes:
        ema: per-bin EMA of $v = w(\\lambda)\\|\\epsilon - \\hat\\epsilon\\|^2$ (of $v^2$ when `moment=2`), bin 0 at
            $\\lambda_{min}$.
    """

    ema: Float[Array, " num_bins"]


class BoundAdaptiveSchedule(AbstractSchedule):
    r"""An adaptive schedule bound to one state: a piecewise-linear $\lambda(t)$ with piecewise-constant $p(\lambda)$.

    Made by `AdaptiveSchedule.bind(state)`; usable wherever an `AbstractSchedule` is (its `lam`, `t`,
    `density`, `dlam_dt` come from the base class, with no truncation: $t_0 = 0$, $t_1 = 1$).

    Attributes:
        lam_min: lower end of the range ($t = 1$).
        lam_max: upper end of the range ($t = 0$).
        masses: probability of each bin (sums to 1, all positive), bin 0 at $\lambda_{min}$.
    """

    lam_min: float
    lam_max: float
    masses: Float[Array, " num_bins"]

    @property
    def num_bins(self) -> int:
        """Number of bins."""
        return self.masses.shape[0]

    def _pos(self, lam: Array) -> tuple[Array, Array, Array]:
        # bin index k (from lam_min) and fraction g in bin k, and position counted from lam_max
        num = self.num_bins
        pos = (lam - self.lam_min) / (self.lam_max - self.lam_min) * num
        k = jnp.clip(jnp.floor(pos), 0, num - 1)
        return k.astype(jnp.int32), pos - k, pos

    def _cums(self, dtype) -> tuple[Array, Array, Array]:
        m = self.masses.astype(dtype)
        zero = jnp.zeros((1,), dtype)
        below = jnp.concatenate([zero, jnp.cumsum(m)])  # mass below the lower edge of bin k
        above = jnp.concatenate([zero, jnp.cumsum(m[::-1])])  # mass above the upper edge of bin K-1-j
        return m, below, above

    def _f(self, u, v):
        m, below, above = self._cums(u.dtype)
        num = self.num_bins
        width = self.lam_max - self.lam_min
        # from the top (accurate for small u): bin j counted from lam_max
        j = jnp.clip(jnp.searchsorted(above, u, side="right", method="scan_unrolled") - 1, 0, num - 1)
        mj = m[num - 1 - j]
        g_top = jnp.clip((u - above[j]) / mj, 0.0, 1.0)
        lam_top = self.lam_max - (j.astype(u.dtype) + g_top) * (width / num)
        # from the bottom (accurate for small v = 1 - u)
        k = jnp.clip(jnp.searchsorted(below, v, side="right", method="scan_unrolled") - 1, 0, num - 1)
        g_bot = jnp.clip((v - below[k]) / m[k], 0.0, 1.0)
        lam_bot = self.lam_min + (k.astype(v.dtype) + g_bot) * (width / num)
        return jnp.where(u < 0.5, lam_top, lam_bot)

    def _u(self, lam):
        m, _, above = self._cums(lam.dtype)
        num = self.num_bins
        pos_top = (self.lam_max - lam) / (self.lam_max - self.lam_min) * num
        j = jnp.clip(jnp.floor(pos_top), 0, num - 1)
        ji = j.astype(jnp.int32)
        return above[ji] + m[num - 1 - ji] * (pos_top - j)

    def _v(self, lam):
        m, below, _ = self._cums(lam.dtype)
        k, g, _ = self._pos(lam)
        return below[k] + m[k] * g

    def _density(self, lam):
        k, _, _ = self._pos(lam)
        return self.masses.astype(lam.dtype)[k] * (self.num_bins / (self.lam_max - self.lam_min))


class AdaptiveSchedule(AbstractNoiseSchedule):
    r"""The adaptive noise schedule of VDM++ (K&G App. F): configuration only; statistics in `AdaptiveState`.

    Args:
        lam_min: lower end of the log-SNR range (finite).
        lam_max: upper end of the log-SNR range (finite, `> lam_min`).
        num_bins: number of equal-width bins ($\ge 1$).
        decay: EMA decay $r \in (0, 1)$ per hit.
        init_value: initial EMA of every bin (finite, $> 0$); equal values give the linear-in-$\lambda$ schedule.
        floor: each bin's $\mathrm{EMA}^{1/\text{moment}}$ is raised to at least `floor` times its mean over bins
            before normalising ($0 \le$ floor $< 1$; see the module docstring).
        moment: 1 (K&G: $p \propto E[v]$ per bin) or 2 (variance-optimal: $p \propto \sqrt{E[v^2]}$ per bin).
    """

    lam_min: float
    lam_max: float
    num_bins: int = eqx.field(static=True)
    decay: float
    init_value: float
    floor: float
    moment: int = eqx.field(static=True)

    def __init__(
        self,
        lam_min: float = -20.0,
        lam_max: float = 20.0,
        num_bins: int = 100,
        decay: float = 0.999,
        init_value: float = 1.0,
        floor: float = 1e-3,
        moment: int = 1,
    ):
        if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)):
            raise TypeError(f"`num_bins` of AdaptiveSchedule must be an integer (e.g. 100); got {num_bins!r}.")
        if num_bins < 1:
            raise ValueError(f"`num_bins` of AdaptiveSchedule must be >= 1 (e.g. 100); got {num_bins!r}.")
        for arg, value in (("lam_min", lam_min), ("lam_max", lam_max), ("decay", decay), ("init_value", init_value)):
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
                raise TypeError(f"`{arg}` of AdaptiveSchedule must be a Python number; got {value!r}.")
        if not (math.isfinite(lam_min) and math.isfinite(lam_max)):
            raise ValueError(
                f"AdaptiveSchedule needs finite `lam_min` and `lam_max`; got lam_min={lam_min}, lam_max={lam_max}."
            )
        if not lam_min < lam_max:
            raise ValueError(
                f"AdaptiveSchedule needs `lam_min` < `lam_max`; got lam_min={lam_min}, lam_max={lam_max}. Swap them."
            )
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` of AdaptiveSchedule must lie strictly in (0, 1), e.g. 0.999; got {decay}.")
        if not (math.isfinite(init_value) and init_value > 0):
            raise ValueError(f"`init_value` of AdaptiveSchedule must be finite and positive; got {init_value}.")
        if not (isinstance(floor, (int, float)) and 0.0 <= floor < 1.0):
            raise ValueError(f"`floor` of AdaptiveSchedule must lie in [0, 1) (e.g. 1e-3); got {floor!r}.")
        if isinstance(moment, bool) or moment not in (1, 2):
            raise ValueError(f"`moment` of AdaptiveSchedule must be 1 (K&G) or 2 (variance-optimal); got {moment!r}.")
        self.moment = int(moment)
        self.lam_min, self.lam_max = float(lam_min), float(lam_max)
        self.num_bins = int(num_bins)
        self.decay, self.init_value, self.floor = float(decay), float(init_value), float(floor)

    # --- state --------------------------------------------------------------------------------

    def init(self, dtype=jnp.float32) -> AdaptiveState:
        """The initial state: every bin's EMA at `init_value` (the linear-in-$\\lambda$ schedule)."""
        return AdaptiveState(ema=jnp.full((self.num_bins,), self.init_value, dtype))

    def _check_state(self, state: AdaptiveState) -> None:
        if not isinstance(state, AdaptiveState):
            raise TypeError(f"`state` must be an AdaptiveState (from `AdaptiveSchedule.init()`); got {type(state)}.")
        if state.ema.shape != (self.num_bins,):
            raise ValueError(
                f"`state.ema` must have shape ({self.num_bins},) for num_bins={self.num_bins}; "
                f"got {state.ema.shape}. Was the state made by a schedule with another `num_bins`?"
            )

    def bin_edges(self) -> np.ndarray:
        """The `num_bins + 1` bin edges, from `lam_min` to `lam_max` (NumPy, float64)."""
        return np.linspace(self.lam_min, self.lam_max, self.num_bins + 1)

    def bin_index(self, lam: FloatLike) -> Array:
        r"""The bin of each $\lambda$ (0 at $\lambda_{min}$), clipped into $[0, \mathrm{num\_bins} - 1]$."""
        lam = as_float(lam)
        pos = (lam - self.lam_min) / (self.lam_max - self.lam_min) * self.num_bins
        safe = jnp.where(jnp.isfinite(pos), pos, 0.0)
        return jnp.clip(jnp.floor(safe), 0, self.num_bins - 1).astype(jnp.int32)

    def masses(self, state: AdaptiveState) -> Float[Array, " num_bins"]:
        """Each bin's probability under `state`: the floored EMA, normalised (all positive, sum 1)."""
        self._check_state(state)
        ema = state.ema if self.moment == 1 else jnp.sqrt(jnp.maximum(state.ema, 0.0))
        scale = jnp.mean(ema)
        p = jnp.maximum(ema, self.floor * scale)
        total = jnp.sum(p)
        ok = jnp.isfinite(total) & (total > 0)
        p = jnp.where(ok, p, jnp.ones_like(p))
        return p / jnp.sum(p)

    def bind(self, state: AdaptiveState) -> BoundAdaptiveSchedule:
        """The schedule defined by `state`: an `AbstractSchedule` for `weighted_loss`, samplers, etc."""
        return BoundAdaptiveSchedule(lam_min=self.lam_min, lam_max=self.lam_max, masses=self.masses(state))

    # --- the schedule under a state -------------------------------------------------------------

    def lam(self, state: AdaptiveState, t: FloatLike) -> Float[Array, "*shape"]:
        r"""$\lambda(t)$: the exact inverse CDF (counted from $\lambda_{max}$), piecewise linear in $t$."""
        return self.bind(state).lam(t)

    def t(self, state: AdaptiveState, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""$t(\lambda) = P(\Lambda > \lambda)$, piecewise linear with knots at the bin edges."""
        return self.bind(state).t(lam)

    def density(self, state: AdaptiveState, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""$p(\lambda)$, piecewise constant on the bins, 0 outside $[\lambda_{min}, \lambda_{max}]$."""
        return self.bind(state).density(lam)

    def dlam_dt(self, state: AdaptiveState, t: FloatLike) -> Float[Array, "*shape"]:
        r"""$d\lambda/dt = -1/p(\lambda(t))$."""
        return self.bind(state).dlam_dt(t)

    # --- the update -----------------------------------------------------------------------------

    def update(
        self,
        state: AdaptiveState,
        lam: Float[ArrayLike, " batch"],
        values: Float[ArrayLike, " n"],
        *,
        axis_name=None,
    ) -> AdaptiveState:
        r"""One count-aware EMA step from $(\lambda_i, v_i)$, $v_i = w(\lambda_i)\|\epsilon_i - \hat\epsilon_i\|^2$.

        A bin hit $n$ times becomes $r^n\,\mathrm{old} + (1 - r^n)\,\mathrm{mean}(v)$; other bins are
        unchanged. Non-finite or negative values and non-finite $\lambda$'s are ignored (not counted).

        Args:
            state: the current state.
            lam: log-SNR of each example (e.g. `WeightedLossAux.lam`).
            values: the targets (e.g. `WeightedLossAux.values`).
            axis_name: inside `shard_map`/`pmap`, the axis to sum the per-bin sums and counts over, so every
                replica ends with the same state. Not needed under a plain (sharded) `jit`: global arrays are
                reduced by the compiler.

        Returns:
            The new state (same shape and dtype).
        """
        self._check_state(state)
        lam, values = jnp.asarray(lam), jnp.asarray(values)
        if lam.ndim != 1 or values.shape != lam.shape:
            raise ValueError(
                f"`lam` and `values` must be 1-d arrays of the same length; got shapes {lam.shape} and {values.shape}."
            )
        dtype = state.ema.dtype
        values = values.astype(dtype)
        targets = values if self.moment == 1 else jnp.square(values)
        valid = jnp.isfinite(targets) & (values >= 0) & jnp.isfinite(lam)  # (v^2 may overflow: ignored too)
        # per-bin sums and counts as a reduction over the batch axis of a (batch, num_bins) one-hot
        # (not a scatter): a plain reduction partitions cleanly when the batch is sharded under jit.
        onehot = (self.bin_index(lam)[:, None] == jnp.arange(self.num_bins)[None, :]) & valid[:, None]
        sums = jnp.sum(jnp.where(onehot, targets[:, None], 0.0), axis=0)
        counts = jnp.sum(onehot.astype(dtype), axis=0)
        if axis_name is not None:
            sums, counts = jax.lax.psum((sums, counts), axis_name)
        hit = counts > 0
        mean = sums / jnp.where(hit, counts, 1.0)
        keep = jnp.power(jnp.asarray(self.decay, dtype), counts)
        new = jnp.where(hit, keep * state.ema + (1.0 - keep) * mean, state.ema)
        return AdaptiveState(ema=new)
