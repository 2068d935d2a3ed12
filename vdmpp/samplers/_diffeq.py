r"""Probability-flow ODE and reverse SDE samplers through diffrax (THEORY §7, K&G eq. 133–134).

VP process on a schedule $\lambda(t)$: $f(z,t) = -\tfrac12 g^2 z$ with $g(t)^2 = -\lambda'(t)\sigma_t^2$ and
score $s = -\hat\epsilon/\sigma$. So the probability-flow drift is
$f - \tfrac12 g^2 s = \tfrac12\lambda'(t)(\sigma^2 z - \sigma\hat\epsilon)$ and the reverse-SDE drift
$f - g^2 s = \lambda'(t)(\tfrac12\sigma^2 z - \sigma\hat\epsilon)$ with diffusion $g = \sigma\sqrt{-\lambda'}$.
"""

from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx

from .._misc import concrete
from .._types import Array, Float, FloatScalarLike, PRNGKeyArray
from ..process import vp_alpha_sigma
from ..schedules import AbstractSchedule
from ._common import check_shape, check_steps, check_trained_range, float_dtype, prepare
from ._nfe import check_solver, evals_per_solve


def pf_drift(eps_fn: Callable, schedule: AbstractSchedule, t, z):
    r"""Probability-flow drift $\tfrac12\lambda'(t)(\sigma^2 z - \sigma\hat\epsilon(z;\lambda_t))$, batched."""
    t = jnp.asarray(t, z.dtype)
    lam = schedule.lam(t)
    dlam = schedule.dlam_dt(t)
    _, sigma = vp_alpha_sigma(lam)
    return 0.5 * dlam * (sigma**2 * z - sigma * eps_fn(z, lam))


def _check_ts(ts, dtype) -> Array | None:
    if ts is None:
        return None
    ts = jnp.asarray(ts, dtype)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"`ts` must be a 1-D array of times in [0, 1]; got shape {ts.shape}.")
    if concrete(ts) is not None:
        if bool(jnp.any((ts < 0) | (ts > 1))) or bool(jnp.any(jnp.diff(ts) > 0)):
            raise ValueError(f"`ts` must be non-increasing times in [0, 1] (we integrate from t=1 to t=0); got {ts}.")
    return ts


def _finish(sol, ts, final_denoise, eps_fn, schedule, dtype):
    ys = sol.ys
    if ts is not None:
        return jnp.moveaxis(ys, 0, 1)  # (num_samples, len(ts), *data)
    z = ys[-1]
    if final_denoise:
        lam0 = jnp.asarray(schedule.lam_max, dtype)
        alpha, sigma = vp_alpha_sigma(lam0)
        z = (z - sigma * eps_fn(z, lam0)) / alpha
    return z


def probability_flow(
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    solver: dfx.AbstractSolver = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(rtol=1e-4, atol=1e-4),
    dt0: float | None = None,
    max_steps: int = 4096,
    ts: Float[Array, " T"] | None = None,
    final_denoise: bool = False,
    throw: bool = True,
    label=None,
    null_label=None,
    guidance_scale: FloatScalarLike | None = None,
    trained_range: tuple | None = None,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    r"""Solve the probability-flow ODE $dz = \tfrac12\lambda'(t)(\sigma^2 z - \sigma\hat\epsilon)\,dt$ from $t=1$ to 0.

    $z_1 \sim N(0, I)$; the whole batch is one diffrax state. Solver, step-size controller, `dt0`
    (negative: we integrate backwards) and `max_steps` go to `diffrax.diffeqsolve` unchanged.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        shape: `(num_samples, *data)`.
        key: PRNG key (for $z_1$).
        schedule: the sampling schedule (need not be the training one).
        solver: a diffrax ODE solver (explicit RK or Euler; their network-evaluation counts are known).
        stepsize_controller: `dfx.PIDController(rtol, atol)` or `dfx.ConstantStepSize()`.
        dt0: initial step, negative (e.g. `-1/32`); `None` lets the PID controller choose (2 evaluations).
        max_steps: diffrax's step limit.
        ts: optional non-increasing times in $[0, 1]$ at which to return the state instead.
        final_denoise: return $\hat x(z_0)$ at $\lambda_{max}$ (one more evaluation) instead of $z_0$.
        throw: diffrax's `throw` (raise if the solve fails, e.g. `max_steps` reached).
        label, null_label, guidance_scale: classifier-free guidance (see `guided`).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the schedule exceeds it.
        dtype: float dtype.

    Returns:
        `(samples, nfe)`: samples shaped `shape` (or `(num_samples, len(ts), *data)`), and the number
        of network calls (a traced int32 scalar, exact for adaptive steps including rejected ones).
    """
    shape = check_shape(shape)
    dtype = float_dtype(dtype)
    check_solver(solver, is_sde=False)
    if dt0 is not None and not dt0 < 0:
        raise ValueError(f"`dt0` must be negative (the ODE runs from t=1 to t=0); got {dt0}. Use dt0={-abs(dt0)}.")
    if dt0 is None and not isinstance(stepsize_controller, dfx.PIDController):
        raise ValueError("`dt0` is required with this `stepsize_controller` (e.g. dt0=-1/32 for 32 steps).")
    check_trained_range(schedule.lam_min, schedule.lam_max, trained_range, "probability_flow")
    ts = _check_ts(ts, dtype)
    eps_fn, calls = prepare(denoiser, shape, dtype, label, null_label, guidance_scale)

    term = dfx.ODETerm(lambda t, z, args: pf_drift(eps_fn, schedule, t, z))
    z1 = jr.normal(key, shape, dtype)
    saveat = dfx.SaveAt(t1=True) if ts is None else dfx.SaveAt(ts=ts)
    sol = dfx.diffeqsolve(
        term,
        solver,
        t0=1.0,
        t1=0.0,
        dt0=dt0,
        y0=z1,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=throw,
    )
    z = _finish(sol, ts, final_denoise and ts is None, eps_fn, schedule, dtype)
    assert sol.stats is not None
    evals = evals_per_solve(solver, sol.stats["num_steps"], is_sde=False, auto_dt0=dt0 is None)
    nfe = (evals + int(final_denoise and ts is None)) * calls
    return z, jnp.asarray(nfe, jnp.int32)


def reverse_sde(
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    solver: dfx.AbstractSolver = dfx.Euler(),
    num_steps: int = 256,
    ts: Float[Array, " T"] | None = None,
    final_denoise: bool = False,
    brownian_tol: float | None = None,
    label=None,
    null_label=None,
    guidance_scale: FloatScalarLike | None = None,
    trained_range: tuple | None = None,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    r"""Solve the reverse SDE from $t=1$ to 0 (K&G eq. 133).

    $dz = \lambda'(t)(\tfrac12\sigma^2 z - \sigma\hat\epsilon)\,dt + \sigma\sqrt{-\lambda'}\,d\bar w$.

    `MultiTerm(ODETerm(drift), ControlTerm(g, VirtualBrownianTree))` with a
    `lineax.DiagonalLinearOperator` diffusion; the noise is additive (it depends on $t$ only), so Itô
    and Stratonovich solvers agree. `dfx.Euler()` is Euler–Maruyama; `dfx.Heun()` is a second-order
    (for additive noise) Stratonovich solver; `dfx.ShARK()` / `dfx.SRA1()` (stochastic RK, strong order
    1.5 for additive noise) are solved in the time $u = 1 - t$ running forwards, because diffrax 0.7's
    stochastic RK solvers are wrong backwards in time (diffrax issue #598). Other solvers run
    backwards, `t0=1, t1=0, dt0=-1/num_steps`, with the Brownian tree defined on $[0, 1]$.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        shape: `(num_samples, *data)`.
        key: PRNG key (for $z_1$ and the Brownian motion).
        schedule: the sampling schedule.
        solver: `dfx.Euler()`, `dfx.Heun()`, `dfx.ShARK()`, ... (fixed steps).
        num_steps: number of equal steps in $t$.
        ts: optional non-increasing times in $[0, 1]$ at which to return the state instead.
        final_denoise: return $\hat x(z_0)$ (one more evaluation) instead of $z_0$.
        brownian_tol: the Brownian tree's resolution (default `1/(64 num_steps)`).
        label, null_label, guidance_scale: classifier-free guidance (see `guided`).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the schedule exceeds it.
        dtype: float dtype.

    Returns:
        `(samples, nfe)` as for `probability_flow`.
    """
    shape = check_shape(shape)
    num_steps = check_steps(num_steps)
    dtype = float_dtype(dtype)
    check_solver(solver, is_sde=True)
    check_trained_range(schedule.lam_min, schedule.lam_max, trained_range, "reverse_sde")
    ts = _check_ts(ts, dtype)
    eps_fn, calls = prepare(denoiser, shape, dtype, label, null_label, guidance_scale)
    srk = isinstance(solver, dfx.AbstractSRK)
    sign = -1.0 if srk else 1.0  # srk: integrate in u = 1 - t, so d/du = -d/dt

    def time(s):
        return 1.0 - s if srk else s

    def drift(s, z, args):
        t = jnp.asarray(time(s), dtype)
        lam = schedule.lam(t)
        dlam = schedule.dlam_dt(t)
        _, sigma = vp_alpha_sigma(lam)
        return sign * dlam * (0.5 * sigma**2 * z - sigma * eps_fn(z, lam))

    def diffusion(s, z, args):
        t = jnp.asarray(time(s), dtype)
        _, sigma = vp_alpha_sigma(schedule.lam(t))
        g = sigma * jnp.sqrt(-schedule.dlam_dt(t))
        return lx.DiagonalLinearOperator(jnp.full(shape, g, dtype))

    zkey, bkey = jr.split(key)
    tol = 1.0 / (64 * num_steps) if brownian_tol is None else brownian_tol
    levy = dfx.SpaceTimeLevyArea if srk else dfx.BrownianIncrement
    bm = dfx.VirtualBrownianTree(0.0, 1.0, tol=tol, shape=jax.ShapeDtypeStruct(shape, dtype), key=bkey, levy_area=levy)
    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
    z1 = jr.normal(zkey, shape, dtype)
    t0, t1, dt0 = (0.0, 1.0, 1.0 / num_steps) if srk else (1.0, 0.0, -1.0 / num_steps)
    if ts is None:
        saveat = dfx.SaveAt(t1=True)
    else:
        saveat = dfx.SaveAt(ts=1.0 - ts if srk else ts)
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=z1,
        saveat=saveat,
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=num_steps + 1,
    )
    z = _finish(sol, ts, final_denoise and ts is None, eps_fn, schedule, dtype)
    assert sol.stats is not None
    evals = evals_per_solve(solver, sol.stats["num_steps"], is_sde=True, auto_dt0=False)
    nfe = (evals + int(final_denoise and ts is None)) * calls
    return z, jnp.asarray(nfe, jnp.int32)
