"""The papers' weighting claims at CPU scale: every weighting, the same network and budget, several seeds.

Gaussian rows (K&G): ELBO, IDDPM, EDM, EDM-monotonic, sigmoid(k=2), flow matching, and a sigmoid-k sweep.
Masked rows (S&T's ImageNet-64 table): ELBO, IDDPM, EDM, sigmoid(k=0), FM, simple. Each (row, seed) is one
run of `train_gaussian.py` / `train_masked.py` (`main`) on digits with the family's preset, which fixes the
network, steps, schedule, optimiser and EMA: only the weighting (and the seed) changes between runs. Each
run reports test bits/dim and the sample-quality metrics of its EMA model (FD, KID, precision, recall,
classifier confidence; `experiments/_evaluation.py`); the sweep reports their mean ± standard error over
seeds, each paper's ordering against the one found, and which differences exceed 2 standard errors.

    python experiments/weighting_sweep.py                   # default preset (under 90 minutes on 2 cores)
    python experiments/weighting_sweep.py --quick           # under 5 minutes (4.3 from a cold compilation cache)
    python experiments/weighting_sweep.py --out runs/ws --families masked --seeds 5
    python experiments/weighting_sweep.py --rescore         # a finished sweep's samples, today's classifier

Writes OUT/weighting_sweep.json (every run's numbers, the aggregates, orderings, significant pairs),
OUT/weighting_sweep.png (bars with ±1 s.e.), OUT/weighting_sweep.md (the tables of docs/results.md),
OUT/samples_<family>.png (one square grid per weighting, seed 0) and OUT/runs/<family>/<row>/seed<k>/ (each
run's outputs). Resume-safe: a finished run (its summary.json) is read back, an interrupted one resumes from
its last checkpoint, so rerunning the same command completes the sweep.
"""

import contextlib
import dataclasses
import functools
import io
import json
import multiprocessing
import pathlib
import re
import resource
import shutil
import sys
import time
from concurrent.futures import as_completed, ProcessPoolExecutor
from typing import Any, Literal

import vdmpp as vd
from tqdm.auto import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _launch, _sweep_report, sample, train_gaussian, train_masked  # noqa: E402


Family = Literal["gaussian", "masked"]

GAUSSIAN_ROWS: dict[str, dict[str, Any]] = {
    "ELBO": dict(weighting="elbo"),
    "IDDPM": dict(weighting="iddpm"),
    "EDM": dict(weighting="edm"),
    "EDM-monotonic": dict(weighting="edm_monotonic"),
    "sigmoid(k=2)": dict(weighting="sigmoid", weighting_param=2.0),
    "FM": dict(weighting="flow_matching"),
}
SIGMOID_KS = (-2.0, 0.0, 4.0)  # with k = 2 above: the sigmoid-k sweep
MASKED_ROWS: dict[str, dict[str, Any]] = {
    "ELBO": dict(weighting="elbo"),
    "IDDPM": dict(weighting="iddpm"),
    "EDM": dict(weighting="edm"),
    "sigmoid(k=0)": dict(weighting="sigmoid", weighting_param=0.0),
    "FM": dict(weighting="flow_matching"),
    "simple": dict(weighting="simple"),
}

# The family presets: everything but the weighting (and the seed). `default` is the demos' networks and
# optimisers (docs/howto/demo_models.md) at 1000 steps, sized so the sweep fits in 90 minutes on 2 cores;
# `quick` is small networks, under 5 minutes on 2 cores (a check of the pipeline: its numbers are poor and noisy).
PRESETS: dict[str, dict[Family, dict[str, Any]]] = {
    "default": {
        "gaussian": dict(train_gaussian.DEMO, steps=1000, eval_samples=512, sample_steps=250),
        "masked": dict(train_masked.DEMO, steps=1000, eval_samples=512, sample_steps=64),
    },
    "quick": {  # an EMA time constant (1 / (1 - decay) = 50 steps) well inside the 300 steps
        "gaussian": dict(
            train_gaussian.DEMO,
            model="mlp",
            width=256,
            depth=2,
            lr=5e-3,
            ema_decay=0.98,
            steps=300,
            eval_samples=128,
            sample_steps=50,
        ),
        "masked": dict(
            train_masked.DEMO, unet_channels=8, ema_decay=0.98, steps=300, eval_samples=128, sample_steps=32
        ),
    },
}
TINY: dict[Family, dict[str, Any]] = {  # CI smoke size
    "gaussian": dict(model="mlp", width=16, depth=1, emb_dim=8, batch_size=16, eval_examples=16),
    "masked": dict(unet_channels=8, embed_dim=4, batch_size=16, eval_examples=16),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the sweep."""

    out: str = "runs/weighting_sweep"
    """Output folder (resume-safe: rerun the same command to continue)."""
    quick: bool = False
    """The quick preset (small networks, 2 seeds, the papers' rows without the sigmoid-k sweep: a check of the
    pipeline, its numbers are rough and noisy; 258 s on 2 cores from a cold compilation cache) instead of the
    default (under 90 minutes)."""
    seeds: int | None = None
    """Seeds per row (None: 3, or 2 with --quick)."""
    families: tuple[Family, ...] = ("gaussian", "masked")
    rows: tuple[str, ...] = ()
    """Only these rows (names as in the tables, e.g. ELBO 'sigmoid(k=2)'); empty: all."""
    steps: int | None = None
    """Training steps per run (None: the preset's)."""
    eval_samples: int | None = None
    """Samples scored per run (None: the preset's)."""
    sample_steps: int | None = None
    tiny: bool = False
    """Tiny networks (a smoke test of the whole pipeline in seconds; the numbers mean nothing)."""
    data: str = "digits"
    jobs: int = 2
    """Runs trained at the same time, each in its own process (one run keeps about one CPU core busy)."""
    rescore: bool = False
    """Score every run's samples with today's default feature network: `sample.py` redraws each finished run's own
    samples from its last checkpoint (bits/dim still come from its summary). For a sweep scored with an earlier
    classifier; written to each run's rescored/<network>/ and read back on a rerun."""
    progress: bool = True


def rows_of(family: Family, quick: bool = False) -> dict[str, dict[str, Any]]:
    """The rows of one family, name -> the script flags that define the weighting (`quick`: no sigmoid-k sweep)."""
    if family == "masked":
        return dict(MASKED_ROWS)
    if quick:
        return dict(GAUSSIAN_ROWS)
    extra = {f"sigmoid(k={k:g})": dict(weighting="sigmoid", weighting_param=k) for k in SIGMOID_KS}
    return {**GAUSSIAN_ROWS, **extra}


def slug(name: str) -> str:
    """A folder name for a row: `sigmoid(k=2)` -> `sigmoid_k2`."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name.replace("=", "")).strip("_").lower()


def run_config(cfg: Config, family: Family, row: dict[str, Any], seed: int, workdir: pathlib.Path) -> Any:
    """The script Config of one run: the family's base and preset, the row's weighting, the seed."""
    preset = PRESETS["quick" if cfg.quick else "default"][family]
    overrides = {k: v for k, v in (("steps", cfg.steps), ("eval_samples", cfg.eval_samples)) if v is not None}
    if cfg.sample_steps is not None:
        overrides["sample_steps"] = cfg.sample_steps
    settings = {**preset, **(TINY[family] if cfg.tiny else {}), **overrides, **row}
    steps = settings["steps"]
    every = steps if cfg.quick or steps < 100 else steps // 4  # resume points for a long run; one for a short one
    settings |= dict(eval_every=0, checkpoint_every=every, warmup=min(settings.get("warmup", 100), steps // 4))
    script = train_gaussian if family == "gaussian" else train_masked
    resume = (workdir / "checkpoints").is_dir() and any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
    return script.Config(
        workdir=str(workdir), data=cfg.data, seed=seed, resume=resume, progress=False, num_samples=64, **settings
    )


def run_dir(cfg: Config, family: Family, name: str, seed: int) -> pathlib.Path:
    """The workdir of one (row, seed)."""
    return pathlib.Path(cfg.out) / "runs" / family / slug(name) / f"seed{seed}"


@functools.cache
def network_name(data: str) -> str:
    """The default feature network of `data`, named by its cache entry (data fingerprint, seed, config)."""
    return vd.metrics.feature_network_path(vd.data.load(data)).name


def rescored_dir(cfg: Config, workdir: pathlib.Path) -> pathlib.Path:
    """Where `--rescore` writes a run's samples scored by the default feature network."""
    return workdir / "rescored" / network_name(cfg.data)


def finished(cfg: Config, job: tuple[Family, str, int]) -> bool:
    """The run's numbers are on disk (its summary, and with `--rescore` its rescored samples' scores)."""
    workdir = run_dir(cfg, *job)
    rescored = not cfg.rescore or (rescored_dir(cfg, workdir) / "sample.json").is_file()
    return (workdir / "summary.json").is_file() and rescored


def rescore(cfg: Config, workdir: pathlib.Path) -> dict[str, float]:
    """The sample metrics of a finished run's own samples (redrawn) under the default feature network."""
    out = rescored_dir(cfg, workdir)
    if not (out / "sample.json").is_file():
        partial = out.with_name(out.name + ".partial")  # sample.py never overwrites: write aside, then rename
        shutil.rmtree(partial, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()):
            sample.main(sample.Config(workdir=str(workdir), out=str(partial), progress=False))
        partial.rename(out)
    metrics = json.loads((out / "sample.json").read_text())["metrics"]
    return {k: float(metrics[k]) for k, _, _ in _sweep_report.METRICS if k in metrics}


def one_run(cfg: Config, family: Family, name: str, seed: int) -> dict[str, Any]:
    """Train and evaluate one (row, seed), or read back its finished summary; return its numbers."""
    workdir = run_dir(cfg, family, name, seed)
    summary_path = workdir / "summary.json"
    if not summary_path.is_file():
        run_cfg = run_config(cfg, family, rows_of(family)[name], seed, workdir)
        script = train_gaussian if family == "gaussian" else train_masked
        log = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # its warnings go to run.log too
            script.main(run_cfg)
        vd.train.atomic_write_bytes(workdir / "run.log", log.getvalue().encode())
        tqdm.write(f"{family:8s} {name:14s} seed {seed}: {time.perf_counter() - t0:.0f} s")
    numbers = _sweep_report.numbers(summary_path)
    return numbers | rescore(cfg, workdir) if cfg.rescore else numbers


def main(cfg: Config) -> dict[str, Any]:
    """Run (or complete) the sweep and write its JSON, PNGs and markdown; return the JSON."""
    if cfg.seeds is None:
        cfg = dataclasses.replace(cfg, seeds=2 if cfg.quick else 3)
    for name in ("seeds", "jobs"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`--{name}` must be a positive integer; got {value!r}.")
    assert cfg.seeds is not None
    known = {name for f in cfg.families for name in rows_of(f)}
    unknown = [r for r in cfg.rows if r not in known]
    if unknown:
        raise ValueError(f"`--rows` {unknown} are not rows of {list(cfg.families)}; choose from {sorted(known)}.")
    # Seed-major within a family: a row's later seeds start after its first finished, so they reuse its
    # compiled step from the persistent compilation cache instead of compiling it at the same time.
    jobs: list[tuple[Family, str, int]] = [
        (family, name, seed)
        for family in cfg.families
        for seed in range(cfg.seeds)
        for name in (rows_of(family) if cfg.rows else rows_of(family, cfg.quick))
        if not cfg.rows or name in cfg.rows
    ]
    out = pathlib.Path(cfg.out)
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="weighting sweep", disable=not cfg.progress, dynamic_ncols=True)
    done: dict[tuple[Family, str, int], dict[str, Any]] = {}
    for job in jobs:  # finished runs are read back here, without starting a process
        if finished(cfg, job):
            done[job] = one_run(cfg, *job)
            bar.update()
    pending = [job for job in jobs if job not in done]
    if cfg.jobs == 1 or len(pending) <= 1:
        for job in pending:
            done[job] = one_run(cfg, *job)
            bar.update()
    else:  # spawned worker processes, one JAX runtime each (reused from run to run)
        workers = min(cfg.jobs, len(pending))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(one_run, cfg, *job): job for job in pending}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update()
    bar.close()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for family, name, seed in jobs:
        runs.setdefault(family, {}).setdefault(name, []).append(done[(family, name, seed)])
    settings = {
        f: dataclasses.asdict(run_config(cfg, f, {}, 0, out / "x"))
        | {"workdir": None, "seed": None, "resume": None, "weighting": None}
        for f in cfg.families
    }
    result = _sweep_report.report(runs, config=dataclasses.asdict(cfg), settings=settings)
    if cfg.rescore:  # every run's sample metrics come from this network (else from each run's own summary)
        result["feature_network"] = network_name(cfg.data)
    result["sweep_seconds_this_session"] = time.perf_counter() - t0
    result["sweep_cpu_seconds_this_session"] = sum(  # this process and its (finished) run processes
        u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    _sweep_report.write_outputs(out, result, runs_dir=out / "runs", slug=slug)
    print(_sweep_report.summary_text(result))
    print(f"outputs in {out.absolute()}: weighting_sweep.json, weighting_sweep.png, weighting_sweep.md, samples_*.png")
    return result


if __name__ == "__main__":
    _launch.run(main, Config)
