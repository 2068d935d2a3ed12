"""Post-hoc EMA sweep of a finished run: test bits/dim against the EMA width sigma_rel (THEORY §13).

    python experiments/posthoc_ema.py --workdir runs/demo
    python experiments/posthoc_ema.py --workdir runs/demo --sigma-rels 0.03 0.05 0.08 0.12 --step 3000

Reads the run's config (WORKDIR/summary.json, else its latest checkpoint), rebuilds its network with the
training script's own `build_run`, reconstructs the power-function EMA of every requested sigma_rel at `--step`
(default: the newest snapshot) from WORKDIR/ema_snapshots/ (`vd.train.reconstruct_ema`), and evaluates its test
bits/dim with the same evaluation draws for every sigma_rel (so differences are not Monte Carlo noise). The run's
fixed-decay EMA at its latest checkpoint is evaluated too, for reference. Widths the snapshots cannot represent
are reported and skipped. Writes WORKDIR/posthoc_ema/STEP/posthoc_ema.json and posthoc_ema.png; never overwrites.

Sample metrics: `sample_metrics` below is the hook for sample-quality numbers (FID/KID/precision-recall from
`vd.metrics`, being added); every number it returns is written to the JSON and plotted beside bits/dim.
"""

import dataclasses
import pathlib
import sys
from typing import Any

import jax.random as jr
import numpy as np
import vdmpp as vd
from tqdm.auto import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli, _launch, _runs  # noqa: E402


DEFAULT_SIGMA_RELS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.10, 0.12, 0.15, 0.2, 0.25)


@dataclasses.dataclass(frozen=True)
class Args:
    """Settings of the sweep."""

    workdir: str
    """The finished training run (with ema_snapshots/)."""
    sigma_rels: tuple[float, ...] = DEFAULT_SIGMA_RELS
    """EMA widths to reconstruct and evaluate."""
    step: int | None = None
    """Training step to reconstruct at (default: the newest snapshot)."""
    eval_examples: int = 0
    """Test examples (0: all)."""
    repeats: int = 4
    """Monte Carlo draws of the bound per test example."""
    eval_batch: int = 256
    seed: int = 0
    """Seed of the evaluation draws (shared by every sigma_rel)."""
    max_residual: float = 0.25
    """Skip a width whose best profile fit leaves a larger relative L2 residual."""
    out: str | None = None
    """Output folder (default WORKDIR/posthoc_ema/STEP); must not hold results already."""
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(args: Args) -> None:
    """Check the settings before anything is loaded or computed (`ConfigError` naming the flag)."""
    _cli.at_least(args, 0, "eval_examples", "seed")
    _cli.at_least(args, 1, "repeats", "eval_batch")
    if args.step is not None:
        _cli.at_least(args, 1, "step")
    _cli.in_range(args, "max_residual", 0.0, float("inf"), closed="(]")
    if not args.sigma_rels:
        raise _cli.ConfigError("`--sigma-rels` must name at least one EMA width, e.g. 0.05 0.1.")
    for s in args.sigma_rels:
        try:
            vd.train.sigma_rel_to_gamma(s)
        except ValueError as e:
            raise _cli.ConfigError(f"`--sigma-rels`: {e}") from None
    if not pathlib.Path(args.workdir).is_dir():
        raise _cli.ConfigError(f"`--workdir` {args.workdir} is not a folder; pass a finished training run's workdir.")


def sample_metrics(run: _launch.Run, model: Any, key: Any) -> dict[str, float]:
    """Hook for sample-quality metrics of `model` (e.g. FID/KID against the test set with `vd.metrics`).

    Return `{name: value}`; each entry is added to the sweep's JSON and plotted against sigma_rel. Empty today.
    """
    del run, model, key
    return {}


def _plot(results: list[dict], reference: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["bpd"] + sorted({k for r in results for k in r.get("sample_metrics", {})})
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False)
    s = np.asarray([r["sigma_rel"] for r in results])
    for ax, name in zip(axes[0], metrics):
        v = np.asarray([r["bpd"] if name == "bpd" else r["sample_metrics"].get(name, np.nan) for r in results])
        ax.plot(s, v, "o-", label="post-hoc EMA")
        if name == "bpd":
            ax.axhline(reference["bpd"], color="gray", ls="--", label=f"fixed EMA {reference['ema_decay']}")
            best = results[int(np.argmin(v))]
            ax.plot([best["sigma_rel"]], [best["bpd"]], "r*", ms=12, label=f"best σ_rel={best['sigma_rel']}")
        ax.set(xscale="log", xlabel="σ_rel (relative EMA width)", ylabel="test bits/dim" if name == "bpd" else name)
        ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2) if s.min() <= t <= s.max()] or list(s)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.suptitle(f"post-hoc EMA at step {reference['step']}")
    vd.train.save_figure(fig, path)


def main(args: Args) -> dict:
    """Sweep sigma_rel for the run in `args.workdir`; returns the JSON written."""
    validate(args)
    workdir = pathlib.Path(args.workdir)
    snapshots = vd.train.load_ema_snapshots(workdir / "ema_snapshots")
    step = max(s.step for s in snapshots) if args.step is None else args.step
    out = pathlib.Path(args.out) if args.out else workdir / "posthoc_ema" / str(step)
    if (out / "posthoc_ema.json").exists():
        raise ValueError(f"{out} already holds a sweep; pass another --out (runs never overwrite results).")
    _, _, run, state, ckpt_step = _runs.load_run(workdir)  # the newest checkpoint: fixed-decay EMA, schedule state
    test = run.data.test[: args.eval_examples] if args.eval_examples else run.data.test
    test = np.asarray(test)
    key = jr.key(args.seed)

    def bpd(model) -> float:
        return vd.train.evaluate_bpd(
            model, run.loss, test, key=key, sched_state=state.sched_state, batch_size=args.eval_batch,
            repeats=args.repeats,
        )  # fmt: skip

    results, skipped = [], []
    for sigma_rel in tqdm(sorted(args.sigma_rels), desc="sigma_rel"):
        try:
            model = vd.train.reconstruct_ema(snapshots, sigma_rel, step, like=run.model, max_residual=args.max_residual)
        except ValueError as e:
            skipped.append({"sigma_rel": sigma_rel, "reason": str(e)})
            continue
        used = [s for s in snapshots if s.step <= step]
        _, residual = vd.train.posthoc_coefficients(
            [s.step for s in used], [s.sigma_rel for s in used], step, sigma_rel
        )
        metrics = sample_metrics(run, model, jr.fold_in(key, 1))
        results.append({"sigma_rel": sigma_rel, "bpd": bpd(model), "residual": residual, "sample_metrics": metrics})
    if not results:
        raise ValueError(
            f"None of `--sigma-rels` {list(args.sigma_rels)} can be represented by the snapshots at step {step}: "
            + skipped[0]["reason"]
        )
    reference = {"step": ckpt_step, "ema_decay": run.cfg.ema_decay, "bpd": bpd(state.ema_model())}
    best = min(results, key=lambda r: r["bpd"])
    summary = {
        "workdir": str(workdir.absolute()),
        "step": step,
        "tracked_sigma_rels": sorted({s.sigma_rel for s in snapshots}),
        "snapshot_steps": sorted({s.step for s in snapshots if s.step <= step}),
        "eval_examples": int(test.shape[0]),
        "repeats": args.repeats,
        "results": results,
        "skipped": skipped,
        "fixed_ema": reference,
        "best": best,
    }
    out.mkdir(parents=True, exist_ok=True)
    vd.train.atomic_write_json(out / "posthoc_ema.json", summary)
    _plot(results, reference, out / "posthoc_ema.png")
    print(f"\nbest sigma_rel {best['sigma_rel']}: {best['bpd']:.4f} bits/dim at step {step} "
          f"(fixed EMA {reference['ema_decay']} at step {ckpt_step}: {reference['bpd']:.4f}); "
          f"{len(skipped)} widths skipped")  # fmt: skip
    print(f"outputs in {out.absolute()}: posthoc_ema.json, posthoc_ema.png")
    return summary


if __name__ == "__main__":
    _cli.run(main, Args, description=__doc__ or "")
