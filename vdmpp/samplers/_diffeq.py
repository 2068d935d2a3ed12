r"""Probability-flow ODE and reverse SDE samplers through diffrax (THEORY §7, K&G eq. 133–134).

VP process on a schedule $\lambda(t)$: $f(z,t) = -\tfrac12 g^2 z$ with $g(t)^2 = -\lambda'(t)\sigma_t^2$ and
score $s = -\hat\epsilon/\sigma$. So the probability-flow drift is
$f - \tfrac12 g^2 s = \tfrac12\lambda'(t)(\sigma^2 z - \sigma\hat\epsilon)$ and the reverse-SDE drift
$f - g^2 s = \lambda'(t)(\tfrac12\sigma^2 z - \sigma\hat\epsilon)$ with diffusion $g = \sigma\sqrt{-\lambda'}$.
Both are solved in the schedule's time $t$; the fixed-step strategies step exactly through the grid's
times $t_k = t(\lambda_k)$ (`diffrax.StepTo`).
"""

from collections.abc import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx

from .._misc import check_positive_int, concrete
from .._types import Array, ArrayLike, Float, PRNGKeyArray, Shaped
from ..process import vp_alpha_sigma
from ..schedules import AbstractSchedule
from ._ancestral import denoise
from ._common import batched, check_shape, check_trained_range, check_z_init
from ._grids import AbstractGrid, UniformTime
from ._nfe import check_solver, evals_per_solve
from ._sample import AbstractSampler, sample


def pf_drift(eps_fn: Callable, schedule: AbstractSchedule, t, z):
    r"""Probability-flow drift $\tfrac12\lambda'(t)(\sigma^2 z - \sigma\hat\epsilon(z;\lambda_t))$, batched."""
    t = jnp.asarray(t, z.dtype)
    lam = schedule.lam(t)
    dlam = schedule.dlam_dt(t)
    _, sigma = vp_alpha_sigma(lam)
    return 0.5 * dlam * (sigma**2 * z - sigma * eps_fn(z, lam))


def _grid_times(grid: AbstractGrid, schedule: AbstractSchedule, num_steps: int, dtype) -> Array:
    """The grid's times $t(\\lambda_k)$, decreasing from the noise end."""
    return schedule.t(grid.lams(schedule, num_steps, dtype))


def _sde_solve(eps_fn, z1, schedule, solver, ts, key, *, save_ts=None, brownian_tol: float) -> Array:
    """Reverse SDE through the decreasing times `ts`; the state at `ts[-1]` (or at `save_ts`)."""
    dtype, shape = z1.dtype, z1.shape
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

    levy = dfx.SpaceTimeLevyArea if srk else dfx.BrownianIncrement
    bm = dfx.VirtualBrownianTree(
        0.0, 1.0, tol=brownian_tol, shape=jax.ShapeDtypeStruct(shape, dtype), key=key, levy_area=levy
    )
    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
    steps = 1.0 - ts if srk else ts
    saveat = dfx.SaveAt(t1=True) if save_ts is None else dfx.SaveAt(ts=1.0 - save_ts if srk else save_ts)
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t0=steps[0],
        t1=steps[-1],
        dt0=None,
        y0=z1,
        saveat=saveat,
        stepsize_controller=dfx.StepTo(ts=steps),
        max_steps=ts.shape[0] - 1,
    )
    assert sol.ys is not None
    return sol.ys[-1] if save_ts is None else jnp.moveaxis(sol.ys, 0, 1)


class ProbabilityFlow(AbstractSampler):
    r"""The probability-flow ODE $dz = \tfrac12\lambda'(t)(\sigma^2 z - \sigma\hat\epsilon)\,dt$ by a fixed-step
    diffrax solver through the grid's times (K&G eq. 134).

    Args:
        solver: an explicit diffrax solver (`dfx.Euler()`, `dfx.Heun()`, `dfx.Tsit5()`, ...), whose
            evaluations per step are known (Heun: 2; Tsit5: 6 per step plus 1).
        grid: the log-SNR grid (default: uniform in the schedule's time).
        final_denoise: end with $\hat x(z)$ at $\lambda_{max}$ (one more evaluation) instead of $z$.
    """

    solver: dfx.AbstractSolver = dfx.Heun()
    grid: AbstractGrid = UniformTime()
    final_denoise: bool = False

    def __check_init__(self):
        check_solver(self.solver, is_sde=False)

    def num_evals(self, num_steps: int) -> int:
        """The solver's evaluations for $N$ steps, plus one for `final_denoise`."""
        return int(evals_per_solve(self.solver, num_steps, is_sde=False, auto_dt0=False)) + int(self.final_denoise)

    def run(
        self, eps_fn: Callable, z: Array, *, key: PRNGKeyArray, schedule: AbstractSchedule, num_steps: int
    ) -> Array:
        """Solve the ODE through the grid's times."""
        del key
        lams = self.grid.lams(schedule, num_steps, z.dtype)
        ts = schedule.t(lams)
        term = dfx.ODETerm(lambda t, y, args: pf_drift(eps_fn, schedule, t, y))
        sol = dfx.diffeqsolve(
            term,
            self.solver,
            t0=ts[0],
            t1=ts[-1],
            dt0=None,
            y0=z,
            stepsize_controller=dfx.StepTo(ts=ts),
            max_steps=num_steps,
        )
        assert sol.ys is not None
        z = sol.ys[-1]
        return denoise(eps_fn, z, lams[-1]) if self.final_denoise else z


class ReverseSDE(AbstractSampler):
    r"""The reverse SDE by a fixed-step diffrax solver through the grid's times (K&G eq. 133).

    $dz = \lambda'(t)(\tfrac12\sigma^2 z - \sigma\hat\epsilon)\,dt + \sigma\sqrt{-\lambda'}\,d\bar w$.

    `MultiTerm(ODETerm(drift), ControlTerm(g, VirtualBrownianTree))` with a `lineax.DiagonalLinearOperator`
    diffusion; the noise is additive, so Itô and Stratonovich solvers agree. `dfx.Euler()` is
    Euler–Maruyama; `dfx.Heun()` is second order for additive noise; `dfx.ShARK()` / `dfx.SRA1()`
    (stochastic RK) are solved in $u = 1 - t$ running forwards, because diffrax 0.7's stochastic RK
    solvers are wrong backwards in time (diffrax issue #598).

    Args:
        solver: `dfx.Euler()`, `dfx.Heun()`, `dfx.ShARK()`, ...
        grid: the log-SNR grid (default: uniform in the schedule's time).
        final_denoise: end with $\hat x(z)$ at $\lambda_{max}$ (one more evaluation) instead of $z$.
        brownian_tol: the Brownian tree's resolution in $t$ (default `1/(64 num_steps)`); keep it
            below the grid's smallest step in $t$.
    """

    solver: dfx.AbstractSolver = dfx.Euler()
    grid: AbstractGrid = UniformTime()
    final_denoise: bool = False
    brownian_tol: float | None = None

    def __check_init__(self):
        check_solver(self.solver, is_sde=True)
        if self.brownian_tol is not None and not (isinstance(self.brownian_tol, float) and self.brownian_tol > 0):
            raise ValueError(f"`brownian_tol` of ReverseSDE must be a positive float or None; got {self.brownian_tol}.")

    def num_evals(self, num_steps: int) -> int:
        """The solver's evaluations for $N$ steps, plus one for `final_denoise`."""
        return int(evals_per_solve(self.solver, num_steps, is_sde=True, auto_dt0=False)) + int(self.final_denoise)

    def run(
        self, eps_fn: Callable, z: Array, *, key: PRNGKeyArray, schedule: AbstractSchedule, num_steps: int
    ) -> Array:
        """Solve the SDE through the grid's times."""
        lams = self.grid.lams(schedule, num_steps, z.dtype)
        tol = 1.0 / (64 * num_steps) if self.brownian_tol is None else self.brownian_tol
        z = _sde_solve(eps_fn, z, schedule, self.solver, schedule.t(lams), key, brownian_tol=tol)
        return denoise(eps_fn, z, lams[-1]) if self.final_denoise else z


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
    trained_range: tuple | None = None,
    z_init: Shaped[ArrayLike, " batch *data"] | None = None,
) -> tuple[Array, Array]:
    r"""Solve the probability-flow ODE from $t = 1$ to 0 with any diffrax step-size control (adaptive by default).

    The reference solver: its call count depends on the data when the steps adapt, so `nfe` is a traced
    int32 here (fixed steps: `sample(ProbabilityFlow(solver), ...)`, with a Python int). Solver,
    step-size controller, `dt0` (negative: backwards) and `max_steps` go to `diffrax.diffeqsolve` unchanged.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        shape: `(num_samples, *data)`.
        key: PRNG key (for $z_1$).
        schedule: the sampling schedule (need not be the training one).
        solver: a diffrax ODE solver (explicit RK or Euler; their network-evaluation counts are known).
        stepsize_controller: `dfx.PIDController(rtol, atol)` or `dfx.ConstantStepSize()`.
        dt0: initial step, negative (e.g. `-1/32`); `None` lets the PID controller choose.
        max_steps: diffrax's step limit.
        ts: optional non-increasing times in $[0, 1]$ at which to return the state instead.
        final_denoise: return $\hat x(z_0)$ at $\lambda_{max}$ (one more evaluation) instead of $z_0$.
        throw: diffrax's `throw` (raise if the solve fails, e.g. `max_steps` reached).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the schedule exceeds it.
        z_init: the $N(0, I)$ start; drawn from `key` when None.

    Returns:
        `(samples, nfe)`: samples shaped `shape` (or `(num_samples, len(ts), *data)`), and the number
        of network calls (a traced int32 scalar, exact for adaptive steps including rejected ones).
    """
    shape = check_shape(shape)
    check_solver(solver, is_sde=False)
    if dt0 is not None and not dt0 < 0:
        raise ValueError(f"`dt0` must be negative (the ODE runs from t=1 to t=0); got {dt0}. Use dt0={-abs(dt0)}.")
    if dt0 is None and not isinstance(stepsize_controller, dfx.PIDController):
        raise ValueError("`dt0` is required with this `stepsize_controller` (e.g. dt0=-1/32 for 32 steps).")
    check_trained_range(schedule.lam_min, schedule.lam_max, trained_range, "probability_flow")
    z1 = jr.normal(key, shape, jnp.float32) if z_init is None else check_z_init(z_init, shape)
    ts = _check_ts(ts, z1.dtype)
    eps_fn, calls = batched(denoiser, shape, z1.dtype)
    term = dfx.ODETerm(lambda t, z, args: pf_drift(eps_fn, schedule, t, z))
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
    assert sol.ys is not None and sol.stats is not None
    final = final_denoise and ts is None
    if ts is not None:
        z = jnp.moveaxis(sol.ys, 0, 1)  # (num_samples, len(ts), *data)
    else:
        z = sol.ys[-1]
        if final:
            z = denoise(eps_fn, z, jnp.asarray(schedule.lam_max, z.dtype))
    evals = evals_per_solve(solver, sol.stats["num_steps"], is_sde=False, auto_dt0=dt0 is None)
    return z, jnp.asarray((evals + int(final)) * calls, jnp.int32)


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
    trained_range: tuple | None = None,
) -> tuple[Array, int]:
    r"""`sample(ReverseSDE(solver), ...)` on the grid uniform in the schedule's time, or the states at `ts`.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        shape: `(num_samples, *data)`.
        key: PRNG key (for $z_1$ and the Brownian motion).
        schedule: the sampling schedule.
        solver: `dfx.Euler()`, `dfx.Heun()`, `dfx.ShARK()`, ... (fixed steps).
        num_steps: number of equal steps in $t$.
        ts: optional non-increasing times in $[0, 1]$ at which to return the state instead.
        final_denoise: return $\hat x(z_0)$ (one more evaluation) instead of $z_0$ (not with `ts`).
        brownian_tol: the Brownian tree's resolution (default `1/(64 num_steps)`).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the schedule exceeds it.

    Returns:
        `(samples, nfe)` with `nfe` a Python int.
    """
    shape = check_shape(shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    check_trained_range(schedule.lam_min, schedule.lam_max, trained_range, "reverse_sde")
    sampler = ReverseSDE(
        solver=solver, grid=UniformTime(), final_denoise=final_denoise and ts is None, brownian_tol=brownian_tol
    )
    if ts is None:
        return sample(sampler, denoiser, shape, key=key, schedule=schedule, num_steps=num_steps)
    save_ts = _check_ts(ts, jnp.float32)
    init_key, run_key = jr.split(key)
    z1 = jr.normal(init_key, shape, jnp.float32)
    eps_fn, calls = batched(denoiser, shape, z1.dtype)
    grid_ts = _grid_times(UniformTime(), schedule, num_steps, z1.dtype)
    tol = 1.0 / (64 * num_steps) if brownian_tol is None else brownian_tol
    ys = _sde_solve(eps_fn, z1, schedule, solver, grid_ts, run_key, save_ts=save_ts, brownian_tol=tol)
    return ys, sampler.num_evals(num_steps) * calls
