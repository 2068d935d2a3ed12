r"""ReMDM remasking (Wang et al. 2025, arXiv:2503.00307) and its $\sigma_t$ schedules (THEORY §14).

From $t$ to $s$ an unmasked token is remasked with probability $\sigma_t \le \min(1, (1 - \alpha_s)/\alpha_t)$
and a masked token is decoded with probability $(\alpha_s - (1 - \sigma_t)\alpha_t)/(1 - \alpha_t)$, which
keeps the marginal masking rate $1 - \alpha_s$; $\sigma_t = 0$ is MD4's ancestral step. The schedules
are those of the authors' code (github.com/kuleshov-group/remdm, `diffusion.py`): `remdm-cap`,
`remdm-rescale`, `remdm-conf` and `remdm-loop`.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._misc import check_finite
from .._types import Array
from ._samplers import AbstractMaskedSampler, step_alphas
from ._sampling import AbstractTimeGrid, check_steps, check_top_p, grid_times, log_probs, reveal, UniformGrid
from ._schedules import AbstractMaskingSchedule


def _check_unit(value, name: str, owner: str, *, open_low: bool = False, open_high: bool = False) -> None:
    check_finite(value, name, owner)
    lo_ok = value > 0 if open_low else value >= 0
    hi_ok = value < 1 if open_high else value <= 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo_ok and hi_ok):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"`{name}` of {owner} must be a float in {lo}0, 1{hi}; got {value!r}.")


def _sigma_max(a_t: Array, one_minus_a_s: Array) -> Array:
    r"""$\min(1, (1 - \alpha_s)/\alpha_t)$: the largest $\sigma_t$ that keeps the decoding probability $\le 1$."""
    return jnp.minimum(1.0, one_minus_a_s / a_t)


class AbstractRemasking(eqx.Module):
    r"""A ReMDM $\sigma_t$ schedule: the per-step $\alpha$'s and $\sigma$'s, and $\sigma$ per token."""

    @abc.abstractmethod
    def plan(self, schedule: AbstractMaskingSchedule, times: Array) -> tuple[Array, Array, Array, Array]:
        r"""Per step $k = 0..T-1$ (from the noise end): $\alpha_t$, $\alpha_s$, the $\lambda$ fed to the
        network, and $\sigma_t$ (for `RemaskConfidence`: its cap)."""

    @abc.abstractmethod
    def per_token(self, sigma: Array, confidence: Array, can_remask: Array) -> Array:
        """$\\sigma$ for each token, given the step's $\\sigma$ and each decoded token's confidence."""


def _plain_plan(schedule, times, sigma_fn: Callable) -> tuple[Array, Array, Array, Array]:
    alphas, lams = step_alphas(schedule, times)
    one_minus = schedule.one_minus_alpha(times).at[0].set(0.0)
    a_t, a_s, om_s, lam_t = alphas[1:][::-1], alphas[:-1][::-1], one_minus[:-1][::-1], lams[1:][::-1]
    return a_t, a_s, lam_t, sigma_fn(_sigma_max(a_t, om_s))


class RemaskCap(AbstractRemasking):
    r"""ReMDM-cap: $\sigma_t = \min(\eta, (1 - \alpha_s)/\alpha_t)$ (`eta=0` is MD4's ancestral sampler).

    Args:
        eta: the cap $\eta \in [0, 1]$ (the paper uses 0.005–0.04).
    """

    eta: float = 0.02

    def __check_init__(self):
        _check_unit(self.eta, "eta", "RemaskCap")

    def plan(self, schedule, times):
        """$\\sigma_t = \\min(\\eta, \\sigma_{max})$."""
        return _plain_plan(schedule, times, lambda smax: jnp.minimum(self.eta, smax))

    def per_token(self, sigma, confidence, can_remask):
        """The same $\\sigma$ everywhere."""
        return jnp.broadcast_to(sigma, confidence.shape)


class RemaskRescale(AbstractRemasking):
    r"""ReMDM-rescale: $\sigma_t = \eta\,\min(1, (1 - \alpha_s)/\alpha_t)$.

    Args:
        eta: $\eta \in [0, 1]$.
    """

    eta: float = 0.02

    def __check_init__(self):
        _check_unit(self.eta, "eta", "RemaskRescale")

    def plan(self, schedule, times):
        """$\\sigma_t = \\eta\\,\\sigma_{max}$."""
        return _plain_plan(schedule, times, lambda smax: self.eta * smax)

    def per_token(self, sigma, confidence, can_remask):
        """The same $\\sigma$ everywhere."""
        return jnp.broadcast_to(sigma, confidence.shape)


class RemaskConfidence(AbstractRemasking):
    r"""ReMDM-conf: $\sigma_t^{(n)} = \eta^{(n)}\min(1, (1 - \alpha_s)/\alpha_t)$ with $\eta$ the softmax over the
    decoded tokens of minus the probability each had when it was decoded (low confidence: remasked
    first); masked tokens decode with $\sigma = 0$."""

    def plan(self, schedule, times):
        """The cap $\\sigma_{max}$."""
        return _plain_plan(schedule, times, lambda smax: smax)

    def per_token(self, sigma, confidence, can_remask):
        """$\\sigma_{max}\\cdot$ softmax over the decoded tokens of each sequence."""
        batch = confidence.shape[0]
        scores = jnp.where(can_remask, confidence, -jnp.inf).reshape(batch, -1)
        w = jnp.where(can_remask.reshape(batch, -1), jax.nn.softmax(scores, axis=1), 0.0)
        return sigma * w.reshape(confidence.shape)


class RemaskLoop(AbstractRemasking):
    r"""ReMDM-loop: MD4 steps down to $\alpha = \alpha_{on}$ until $t_{on}$, remasking at constant
    $\alpha_{on}$ with $\sigma = \eta$ on the steps within $[t_{off}, t_{on}]$, then MD4 steps to the data.

    The schedule's time is remapped piecewise linearly (with the linear schedule $\alpha = 1 - t$ this is
    the authors' `remdm-loop`); $\sigma$ is capped at $(1 - \alpha_{on})/\alpha_{on}$.

    Args:
        t_on: when the loop starts ($0 < t_{off} < t_{on} < 1$; the paper: 0.55).
        t_off: when it ends (the paper: 0.05).
        alpha_on: $\alpha$ held during the loop (the paper: 0.9).
        eta: the remasking probability in the loop (the paper: 0.02).
    """

    t_on: float = 0.55
    t_off: float = 0.05
    alpha_on: float = 0.9
    eta: float = 0.02

    def __check_init__(self):
        _check_unit(self.t_on, "t_on", "RemaskLoop", open_low=True, open_high=True)
        _check_unit(self.t_off, "t_off", "RemaskLoop", open_low=True, open_high=True)
        _check_unit(self.alpha_on, "alpha_on", "RemaskLoop", open_low=True, open_high=True)
        _check_unit(self.eta, "eta", "RemaskLoop")
        if not self.t_off < self.t_on:
            raise ValueError(f"RemaskLoop needs `t_off` < `t_on`; got t_off={self.t_off}, t_on={self.t_on}.")

    def plan(self, schedule, times):
        """MD4 on the remapped time outside the loop, $\\alpha_{on}$ and $\\sigma = \\eta$ inside it."""
        lam_on = jnp.log(jnp.asarray(self.alpha_on, times.dtype)) - jnp.log1p(-self.alpha_on)
        u_on = schedule.t(lam_on)
        u = jnp.where(
            times > self.t_on,
            u_on + (times - self.t_on) * (1.0 - u_on) / (1.0 - self.t_on),
            jnp.where(times <= self.t_off, times * u_on / self.t_off, u_on),
        )
        alphas, lams = step_alphas(schedule, u)
        one_minus = schedule.one_minus_alpha(u).at[0].set(0.0)
        loop = (times[1:][::-1] <= self.t_on) & (times[:-1][::-1] >= self.t_off)  # the step lies in the window
        a_t, lam_t = alphas[1:][::-1], lams[1:][::-1]
        a_s = jnp.where(loop, a_t, alphas[:-1][::-1])
        om_s = jnp.where(loop, one_minus[1:][::-1], one_minus[:-1][::-1])
        sigma = jnp.where(loop, jnp.minimum(self.eta, _sigma_max(a_t, om_s)), 0.0)
        return a_t, a_s, lam_t, sigma

    def per_token(self, sigma, confidence, can_remask):
        """The same $\\sigma$ everywhere."""
        return jnp.broadcast_to(sigma, confidence.shape)


class ReMDM(AbstractMaskedSampler):
    r"""ReMDM (Wang et al. 2025): MD4's sampler with remasking, so later steps can correct earlier tokens.

    Given tokens (`Condition`) and, in `SemiAutoregressive`, earlier blocks are never remasked. With
    `RemaskCap(eta=0.0)` it draws exactly as `Ancestral` (the same key gives the same samples). $T$ calls.

    Args:
        remasking: the $\sigma_t$ schedule: `RemaskCap`, `RemaskRescale`, `RemaskConfidence`, `RemaskLoop`.
        grid: the time grid.
        top_p: optional nucleus threshold in $(0, 1]$.
    """

    remasking: AbstractRemasking = RemaskCap()
    grid: AbstractTimeGrid = UniformGrid()
    top_p: float | None = None

    def __check_init__(self):
        if not isinstance(self.remasking, AbstractRemasking):
            raise TypeError(
                f"`remasking` of ReMDM must be an AbstractRemasking such as RemaskCap(); got {self.remasking!r}."
            )
        check_top_p(self.top_p, "ReMDM")

    def num_calls(self, num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
        """$T$."""
        return check_steps(num_steps, "ReMDM")

    def run(self, logits_fn, z, frozen, *, key, schedule, num_steps, mask_id, num_tokens, num_free, dtype):
        """Remasking steps along the grid."""
        assert num_steps is not None
        a_t, a_s, lam_t, sigma = self.remasking.plan(schedule, grid_times(self.grid, num_steps))

        def step(carry, inp):
            z, conf = carry
            at, as_, lam, sig, k = inp
            kk = jr.fold_in(key, k)
            logp = log_probs(logits_fn(z, lam), self.top_p, dtype)
            can = (z != mask_id) & ~frozen
            sig_tok = self.remasking.per_token(sig.astype(dtype), conf, can)
            r = jnp.clip((as_ - (1.0 - sig_tok) * at) / (1.0 - at), 0.0, 1.0)
            z_new = reveal(z, frozen, logp, r, kk, mask_id)
            remask = can & (jr.uniform(jr.fold_in(kk, 1), z.shape, dtype) < sig_tok)
            z_new = jnp.where(remask, mask_id, z_new)
            decoded = (z == mask_id) & (z_new != mask_id)
            p_new = jnp.exp(jnp.take_along_axis(logp, jnp.where(decoded, z_new, 0)[..., None], axis=-1)[..., 0])
            conf = jnp.where(decoded, -p_new, jnp.where(remask, -jnp.inf, conf))
            return (z_new, conf), None

        conf0 = jnp.full(z.shape, -jnp.inf, dtype)
        inputs = (a_t.astype(dtype), a_s.astype(dtype), lam_t, sigma, jnp.arange(num_steps))
        (z, _), _ = lax.scan(step, (z, conf0), inputs)
        return z
