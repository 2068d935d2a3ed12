r"""Exact log-likelihood through the probability-flow ODE (THEORY §7; Song et al. 2021, App. D.2).

Along the probability-flow ODE $dz/dt = F(z, t)$ the log-density obeys the instantaneous change of
variables $d\log p_t(z_t)/dt = -\nabla\cdot F$, so
$\log p_0(z_0) = \log N(z_1; 0, I) + \int_0^1 \nabla\cdot F(z_t, t)\,dt$, integrated forwards from the data
at $t = 0$ ($\lambda_{max}$) to $t = 1$ ($\lambda_{min}$, where the prior is $N(0, I)$). With
$F = \tfrac12\lambda'(\sigma^2 z - \sigma\hat\epsilon)$,
$\nabla\cdot F = \tfrac12\lambda'(\sigma^2 D - \sigma\,\mathrm{tr}\,\partial\hat\epsilon/\partial z)$.
The trace is exact (forward-mode Jacobian, $D$ JVPs: for small $D$) or Hutchinson's
$v^\top (\partial\hat\epsilon/\partial z) v$ with $K$ Rademacher probes $v$ held fixed along the path; each
probe gives an unbiased estimate, and their mean and standard error $\mathrm{sd}/\sqrt K$ are reported.

Discrete data (integer levels $x \in \{0..L-1\}^D$): uniform dequantisation $y = x + u$,
$u \sim U[0,1)^D$, mapped to model space $x_m = 2y/L - 1$ (so bin centres match `uint8_to_float`).
The density of $y$ is $p_y(y) = p_{model}(x_m)(2/L)^D$, and by Jensen
$\log P(x) = \log\int_{[0,1)^D} p_y(x+u)\,du \ge E_u[\log p_{model}(x_m)] + D\log(2/L)$.
So the reported log-likelihood is $\log p_{model}(x_m) + D\log(2/L)$ (a one-sample estimate of a lower
bound on $\log P(x)$) and bits/dim $= -(\log p_{model}(x_m) + D\log(2/L))/(D\ln 2)$, i.e. $+\log_2(L/2)$
($+7$ for $L = 256$) on the model-space value — an upper bound on $-\log_2 P(x)/D$, like `elbo_bpd`.
"""

import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, Float, PRNGKeyArray, Shaped
from ..process import vp_alpha_sigma
from ..schedules import AbstractSchedule
from ._common import check_denoiser, float_dtype
from ._nfe import check_solver, evals_per_solve


class LikelihoodAux(eqx.Module):
    """By-products of `log_likelihood`, per example.

    Attributes:
        stderr: standard error of the Hutchinson estimate in nats (0 for the exact trace).
        bits_per_dim: $-\\log p/(D \\ln 2)$ (with the dequantisation offset for integer data).
        prior_logp: $\\log N(z_1; 0, I)$ at the end of the path.
        nfe: evaluations of the probability-flow vector field (each is one network call plus its
            JVPs: $D$ for the exact trace, $K$ for Hutchinson).
    """

    stderr: Float[Array, " batch"]
    bits_per_dim: Float[Array, " batch"]
    prior_logp: Float[Array, " batch"]
    nfe: Array


def log_likelihood(
    denoiser: Callable,
    x: Shaped[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    hutchinson_probes: int | None = None,
    solver: dfx.AbstractSolver = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(rtol=1e-5, atol=1e-5),
    dt0: float | None = None,
    max_steps: int = 8192,
    num_levels: int = 256,
    return_aux: bool = False,
) -> Float[Array, " batch"] | tuple[Float[Array, " batch"], LikelihoodAux]:
    r"""Log-likelihood in nats per example by the probability-flow ODE (see the module docstring).

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        x: a batch. Float data is $z_0$ in model space (the density is that of $z$ at $\lambda_{max}$);
            integer data (levels $0..L-1$) is dequantised uniformly with `key` and the result is the
            discrete log-likelihood bound, comparable with `elbo_bpd`.
        key: PRNG key (dequantisation noise, Hutchinson probes).
        schedule: defines the path $\lambda(t)$ and its endpoints $\lambda_{max}$, $\lambda_{min}$.
        hutchinson_probes: `None` for the exact trace, else the number $K \ge 2$ of Rademacher probes.
        solver, stepsize_controller, dt0, max_steps: passed to `diffrax.diffeqsolve` ($t$: 0 to 1,
            so `dt0 > 0`).
        num_levels: $L$ for integer data.
        return_aux: also return `LikelihoodAux` (standard error, bits/dim, prior term, NFE).

    Returns:
        $\log p(x)$ in nats, shape `(batch,)` (and the aux when asked).
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`x` must be a batch shaped (batch, *data); got shape {x.shape}.")
    check_solver(solver, is_sde=False)
    if dt0 is not None and not dt0 > 0:
        raise ValueError(f"`dt0` must be positive (the likelihood ODE runs from t=0 to t=1); got {dt0}.")
    if dt0 is None and not isinstance(stepsize_controller, dfx.PIDController):
        raise ValueError("`dt0` is required with this `stepsize_controller`.")
    if hutchinson_probes is not None:
        k_probes = check_positive_int(hutchinson_probes, "hutchinson_probes")
        if k_probes < 2:
            raise ValueError(f"`hutchinson_probes` must be >= 2 to estimate a standard error; got {k_probes}.")
    shape = x.shape
    dims = math.prod(shape[1:])
    qkey, pkey = jr.split(key)
    offset = 0.0
    if jnp.issubdtype(x.dtype, jnp.integer):
        num_levels = check_positive_int(num_levels, "num_levels")
        u = jr.uniform(qkey, shape, jnp.float32)
        x = 2.0 * (x.astype(jnp.float32) + u) / num_levels - 1.0
        offset = dims * math.log(2.0 / num_levels)
    dtype = float_dtype(x.dtype)
    check_denoiser(denoiser, shape[1:], dtype)
    eps_one = denoiser  # one example; nfe below counts vector-field evaluations

    if hutchinson_probes is None:

        def trace(z, lam):
            flat = z.reshape(-1)
            jac = jax.jacfwd(lambda f: eps_one(f.reshape(z.shape), lam).reshape(-1))(flat)
            return jnp.trace(jac)[None], eps_one(z, lam)

        probes = jnp.zeros((shape[0], 1), dtype)  # unused
    else:
        probes = jr.rademacher(pkey, (shape[0], hutchinson_probes, *shape[1:]), dtype)

    def vf(t, y, args):
        z, _ = y
        t = jnp.asarray(t, dtype)
        lam = schedule.lam(t)
        dlam = schedule.dlam_dt(t)
        _, sigma = vp_alpha_sigma(lam)
        if hutchinson_probes is None:
            tr, eps = jax.vmap(trace, in_axes=(0, None))(z, lam)
        else:

            def est(zi, vi):
                eps_i, jvp_fn = jax.linearize(lambda a: eps_one(a, lam), zi)
                vjv = jax.vmap(lambda v: jnp.sum(v * jvp_fn(v)))(vi)
                return vjv, eps_i

            tr, eps = jax.vmap(est)(z, probes)
        dz = 0.5 * dlam * (sigma**2 * z - sigma * eps)
        div = 0.5 * dlam * (sigma**2 * dims - sigma * tr)
        return dz, div

    k = 1 if hutchinson_probes is None else hutchinson_probes
    y0 = (x, jnp.zeros((shape[0], k), dtype))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vf),
        solver,
        t0=0.0,
        t1=1.0,
        dt0=dt0,
        y0=y0,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
    )
    assert sol.ys is not None and sol.stats is not None
    z1, delta = sol.ys[0][-1], sol.ys[1][-1]
    prior = -0.5 * jnp.sum(z1.reshape(shape[0], -1) ** 2, axis=-1) - 0.5 * dims * math.log(2 * math.pi)
    per_probe = prior[:, None] + delta + offset
    logp = jnp.mean(per_probe, axis=-1)
    if hutchinson_probes is None:
        stderr = jnp.zeros_like(logp)
    else:
        stderr = jnp.std(per_probe, axis=-1, ddof=1) / math.sqrt(hutchinson_probes)
    if not return_aux:
        return logp
    nfe = jnp.asarray(evals_per_solve(solver, sol.stats["num_steps"], is_sde=False, auto_dt0=dt0 is None), jnp.int32)
    bpd = -logp / (dims * math.log(2.0))
    return logp, LikelihoodAux(stderr=stderr, bits_per_dim=bpd, prior_logp=prior, nfe=nfe)
