"""Honest network-evaluation counts for diffrax solves.

diffrax's `sol.stats` counts steps, not vector-field evaluations. The evaluations per step follow
from the solver: explicit Runge–Kutta with $s$ stages makes $s$ per attempted step, or with FSAL
(first same as last) $s$ on the first step and $s - 1$ after; Euler makes one; a stochastic RK
(`AbstractSRK`) evaluates the drift once per stage. `PIDController` with `dt0=None` costs nothing
extra in diffrax 0.7 (its initial-step heuristic sees a wrapped term and returns 0.01 without
evaluating it). tests/test_samplers.py checks each rule against a counting denoiser.
"""

import diffrax as dfx


def _erk_stages(solver) -> tuple[int, bool]:
    tab = solver.tableau
    return len(tab.c) + 1, bool(tab.fsal)


def evals_per_solve(solver, num_steps, *, is_sde: bool, auto_dt0: bool):
    """Vector-field evaluations for a solve that attempted `num_steps` steps (a traced int is fine)."""
    if isinstance(solver, dfx.Euler):
        count = num_steps
    elif isinstance(solver, dfx.AbstractSRK):
        count = len(solver.tableau.b_sol) * num_steps
    elif isinstance(solver, dfx.AbstractERK):
        stages, fsal = _erk_stages(solver)
        # With a ControlTerm (SDE) the vector field counts as "expensive" and diffrax turns FSAL off.
        if fsal and not is_sde:
            count = 1 + (stages - 1) * num_steps
        else:
            count = stages * num_steps
    else:
        raise ValueError(
            f"`solver`={type(solver).__name__} is not supported: vdmpp counts network evaluations exactly and "
            "knows the count for dfx.Euler, explicit Runge-Kutta solvers (dfx.Heun, dfx.Midpoint, dfx.Ralston, "
            "dfx.Bosh3, dfx.Tsit5, dfx.Dopri5, dfx.Dopri8) and, for SDEs, stochastic RK solvers (dfx.ShARK, "
            "dfx.SRA1, dfx.SEA, ...)."
        )
    del auto_dt0  # free in diffrax 0.7 (see the module docstring); kept so a change is one place
    return count


def check_solver(solver, *, is_sde: bool) -> None:
    """Raise early for a solver whose evaluation count is unknown."""
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver instance such as dfx.Tsit5(); got {solver!r}.")
    evals_per_solve(solver, 1, is_sde=is_sde, auto_dt0=False)
    if isinstance(solver, dfx.AbstractImplicitSolver):
        raise ValueError(f"`solver`={type(solver).__name__}: implicit solvers are not supported.")
