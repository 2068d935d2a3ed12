"""Sample a trained run's checkpoint with any sampler and budget: grid, samples, network calls and sample quality.

    python experiments/sample.py --workdir runs/demo                                  # the training loop's sampler
    python experiments/sample.py --workdir runs/demo --sampler dpmpp_2m --steps 20 --grid uniform_lambda
    python experiments/sample.py --workdir runs/m --sampler first_hitting --num-samples 64 --no-metrics

Rebuilds the run with its training script (experiments/_runs.py), restores checkpoint `--step` (default: the
newest) and draws `--num-samples` samples of its EMA model (`--no-ema`: the raw parameters) with `--sampler`
at `--steps` (default: the run's --sample-steps), in jitted chunks of `--batch-size`, through the loss's
`sample_with` (`vd.train.GaussianLoss` / `vd.train.MaskedLoss`): on the run's sampling schedule, decoded to
integer levels or token ids. Writes OUT (default WORKDIR/samples/SAMPLER_STEPS_STEP; never overwritten):
samples.png (images) or samples.txt (text), samples.npz (`samples`, `nfe`, `sampler`, `steps`, `step`) and
sample.json (nfe, seconds, and FD/KID/precision/recall/classifier confidence for labelled images or generative
perplexity for text, as the training loop scores them).

Without `--seed`, the keys are the training loop's final sample evaluation's (the same chunks of the run's
--num-samples), so the defaults (ancestral, --sample-steps, --eval-samples samples, EMA) redraw exactly the
samples the loop scored at that step: the same numbers as its summary.json.
"""

import dataclasses
import io
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import diffrax as dfx
import equinox as eqx
import jax.random as jr
import numpy as np
import vdmpp as vd
from tqdm.auto import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli, _evaluation, _runs, train_masked  # noqa: E402


class Options(NamedTuple):
    """What a sampler entry may use: the data's number of levels and the `--grid` (as the sampler's `grid=`)."""

    levels: int
    grid: dict[str, Any]
    clip: float | None


S, M = vd.samplers, vd.masked
SAMPLERS: dict[str, dict[str, Callable[[Options], Any]]] = {
    "gaussian": {  # every one ends at z at lambda_max, decoded by the run's discretised decoder
        "ancestral": lambda o: S.Ancestral(num_levels=o.levels, **o.grid),  # the training loop's sampler
        "ddim": lambda o: S.DDIM(eta=0.0, clip_denoised=o.clip, **o.grid),
        "dpmpp_2m": lambda o: S.DPMSolverPP(order=2, clip_denoised=o.clip, **o.grid),
        "dpmpp_3m": lambda o: S.DPMSolverPP(order=3, clip_denoised=o.clip, **o.grid),
        "dpmpp_2m_sde": lambda o: S.DPMSolverPP(order=2, eta=1.0, clip_denoised=o.clip, **o.grid),
        "edm": lambda o: S.EDM(final_denoise=False, **o.grid),  # EDM's Heun steps (default grid: EDM's rho-grid)
        "pf_heun": lambda o: S.ProbabilityFlow(dfx.Heun(), **o.grid),  # probability-flow ODE, Heun
        "sde": lambda o: S.ReverseSDE(dfx.Euler(), **o.grid),  # reverse SDE, Euler-Maruyama
    },
    "masked": {
        "ancestral": lambda o: M.Ancestral(),  # MD4's sampler: the training loop's
        "remdm": lambda o: M.ReMDM(M.RemaskCap(eta=0.02)),
        "first_hitting": lambda o: M.FirstHitting(),  # one call per token: --steps must be >= the tokens
        "maskgit": lambda o: M.MaskGIT(),
        "semi_ar": lambda o: M.SemiAutoregressive(M.Ancestral(), num_blocks=4),  # --steps per block
    },
}
"""Sampler names -> strategy objects, by the kind of run (the only place that maps these names)."""

GRIDS = {"uniform_t": S.UniformTime(), "uniform_lambda": S.UniformLogSNR(), "edm": S.EDMGrid()}
"""`--grid` names -> the log-SNR grid of a Gaussian sampler."""

PNG_SAMPLES = 256
"""At most this many samples go into samples.png (all of them into samples.npz)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """What to sample, from which run."""

    workdir: str
    """The training run (train_gaussian.py or train_masked.py) to sample."""
    step: int | None = None
    """Checkpoint step (default: the newest)."""
    sampler: str = "ancestral"
    """Gaussian runs: ancestral, ddim, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, edm, pf_heun, sde; masked runs:
    ancestral, remdm, first_hitting, maskgit, semi_ar."""
    grid: Literal["uniform_t", "uniform_lambda", "edm"] | None = None
    """A Gaussian sampler's log-SNR grid (default: the sampler's own: uniform_t, edm for the edm sampler)."""
    clip_denoised: float | None = 1.0
    """ddim and dpmpp_*: clip each data prediction to [-c, c] (vdmpp's data lie in [-1, 1]); None: the exact
    ODE, which a network's large errors at low SNR can derail."""
    steps: int | None = None
    """Sampler steps (default: the run's --sample-steps)."""
    num_samples: int | None = None
    """Samples to draw (default: the run's --eval-samples, else its --num-samples)."""
    batch_size: int | None = None
    """Samples per jitted sampler call (default: the run's --num-samples, as the training loop)."""
    ema: bool = True
    """Sample the EMA model (else the raw parameters)."""
    seed: int | None = None
    """Seed of the draws (default: the training loop's keys for its final sample evaluation at that step)."""
    out: str | None = None
    """Output folder (default WORKDIR/samples/SAMPLER_STEPS_STEP); must not exist."""
    metrics: bool = True
    """Score the samples (FD etc. for labelled images, generative perplexity for text) where the data allow."""
    progress: bool = True
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check the flags that need no run (`ConfigError` naming the flag)."""
    for name in ("steps", "num_samples", "batch_size"):
        if getattr(cfg, name) is not None:
            _cli.at_least(cfg, 1, name)
    for name in ("step", "seed"):
        if getattr(cfg, name) is not None:
            _cli.at_least(cfg, 0, name)
    if cfg.clip_denoised is not None:
        _cli.in_range(cfg, "clip_denoised", 0.0, float("inf"), closed="()")
    if not pathlib.Path(cfg.workdir).is_dir():
        raise _cli.ConfigError(f"`--workdir` {cfg.workdir} is not a folder; pass a training run's workdir.")


def check_sampler(cfg: Config, kind: str) -> None:
    """`--sampler` must name a sampler of the run's kind, and `--grid` be given for Gaussian runs only."""
    table = SAMPLERS[kind]
    if cfg.sampler not in table:
        other = [k for k in SAMPLERS if k != kind and cfg.sampler in SAMPLERS[k]]
        why = f"is a {other[0]} sampler, and " if other else "is unknown; "
        raise _cli.ConfigError(
            f"`--sampler` {cfg.sampler!r} {why}{cfg.workdir} is a {kind} run: pass one of {', '.join(table)}."
        )
    if cfg.grid is not None and kind != "gaussian":
        raise _cli.ConfigError(f"`--grid` {cfg.grid!r} applies to Gaussian runs only; {cfg.workdir} is a {kind} run.")


def build_sampler(cfg: Config, kind: str, levels: int) -> Any:
    """The strategy object `--sampler` (and `--grid`) name for a run of `kind` on `levels`-level data."""
    check_sampler(cfg, kind)
    grid = {} if cfg.grid is None else {"grid": GRIDS[cfg.grid]}
    with _cli.flags(cfg, "sampler"):
        return SAMPLERS[kind][cfg.sampler](Options(levels, grid, cfg.clip_denoised))


@eqx.filter_jit
def _draw(loss: vd.train.AbstractLoss, model, sched_state, sampler, key, shape: tuple[int, ...], num_steps: int):
    return loss.sample_with(model, sched_state, sampler=sampler, key=key, shape=shape, num_steps=num_steps)


def draw(loaded: _runs.LoadedRun, sampler: Any, *, key, num_samples: int, batch: int, num_steps: int, ema: bool,
         progress: bool) -> tuple[np.ndarray, int]:  # fmt: skip
    """`(samples, nfe)`: chunk i draws `batch` samples with `fold_in(key, i)` (the last chunk is padded, so one
    compilation), as `vd.train.SampleEvaluation` does in the training loop."""
    run, state = loaded.run, loaded.state
    model = state.ema_model() if ema else state.model
    shape = (min(batch, num_samples), *run.data.example_shape)
    chunks, nfe = [], 0
    for i in tqdm(range(math.ceil(num_samples / shape[0])), desc="sampling", unit="chunk", disable=not progress):
        out, nfe = _draw(run.loss, model, state.sched_state, sampler, jr.fold_in(key, i), shape, num_steps)
        chunks.append(np.asarray(out))
    return np.concatenate(chunks)[:num_samples], nfe


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def main(cfg: Config) -> dict:
    """Sample the run in `cfg.workdir`; returns the record written to sample.json."""
    validate(cfg)
    workdir = pathlib.Path(cfg.workdir)
    with _cli.flags(cfg, "workdir"):
        record = _runs.run_config(workdir)
    check_sampler(cfg, record.kind)
    with _cli.flags(cfg, "step"):
        step = _runs.checkpoint_step(workdir, cfg.step)
    steps = cfg.steps or record.cfg.sample_steps
    out = pathlib.Path(cfg.out) if cfg.out else workdir / "samples" / f"{cfg.sampler}_{steps}_{step}"
    if out.exists():
        raise _cli.ConfigError(f"`--out` {out} exists already (results are never overwritten); pass another --out.")
    loaded = _runs.load_run(workdir, step)
    run = loaded.run
    levels = int(run.data.num_levels or 0)
    sampler = build_sampler(cfg, record.kind, levels)
    num_samples = cfg.num_samples or run.cfg.eval_samples or run.cfg.num_samples
    batch = cfg.batch_size or run.cfg.num_samples
    if cfg.seed is None:  # the training loop's key for its sample evaluation at `step` (vd.train.fit)
        key = jr.fold_in(jr.fold_in(run.key, 3_000_017), step)
    else:
        key = jr.key(cfg.seed)
    t0 = time.perf_counter()
    try:  # the sampler checks its step count when it is traced: e.g. first_hitting with fewer steps than tokens
        samples, nfe = draw(
            loaded, sampler, key=key, num_samples=num_samples, batch=batch, num_steps=steps, ema=cfg.ema,
            progress=cfg.progress,
        )  # fmt: skip
    except (ValueError, TypeError) as e:
        raise _cli.ConfigError(f"`--sampler` {cfg.sampler!r} at `--steps` {steps}: {e}") from e
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    if cfg.metrics:
        evaluation = _evaluation.sample_evaluation(run.data, num_samples=num_samples, progress=cfg.progress)
        if evaluation is not None:
            metrics = {k: float(v) for k, v in evaluation.score(samples).items()}
    _cli.check_finite_results(metrics, "Scoring the samples")
    summary = {
        "workdir": str(workdir.absolute()),
        "kind": record.kind,
        "sampler": cfg.sampler,
        "grid": cfg.grid,
        "sampler_object": repr(sampler),
        "steps": steps,
        "step": step,
        "nfe": nfe,
        "num_samples": num_samples,
        "ema": cfg.ema,
        "seed": cfg.seed,
        "seconds": seconds,  # sampling, compilation included
        "metrics": metrics,
    }
    out.mkdir(parents=True)
    decode = train_masked.text_decoder(run.data)
    if decode is None:
        vd.train.save_png(vd.train.image_grid(samples[:PNG_SAMPLES], levels), out / "samples.png")
        shown = "samples.png"
    else:
        vd.train.atomic_write_bytes(out / "samples.txt", decode(samples).encode())
        shown = "samples.txt"
    vd.train.atomic_write_bytes(
        out / "samples.npz", _npz(samples=samples, nfe=nfe, sampler=cfg.sampler, steps=steps, step=step)
    )
    vd.train.atomic_write_json(out / "sample.json", summary)
    print(
        f"\n{cfg.sampler}, {steps} steps ({nfe} network calls per sample), step {step}"
        f"{'' if cfg.ema else ' (raw parameters)'}: {num_samples} samples in {seconds:.1f} s"
        + _evaluation.describe(metrics)
    )
    print(f"outputs in {out.absolute()}: {shown}, samples.npz, sample.json")
    return summary


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__ or "")
