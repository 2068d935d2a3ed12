"""Bad input, as a careless new user would type it, gets one clear error before any work (issue #15).

The training scripts and the other experiments and benchmarks are driven through their user path: flags parsed
by tyro (`tyro.cli(Config, args=...)`), then `experiments._cli.call(main, cfg)`, which is what `__main__` runs
before the process exits with the status it returns. A few cases go through real subprocesses to check the
exit status and that nothing else is printed. Each script case asserts status 2, ONE `error:` line naming the
flag (or file) and the bad value, and that nothing was written; none of them gets as far as compiling.
"""

import functools as ft
import os
import pathlib
import pickle
import subprocess
import sys
import time

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import tyro
import vdmpp as vd


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.adaptive_variance as bench_variance  # noqa: E402
import benchmarks.capacity as bench_capacity  # noqa: E402
import benchmarks.samplers as bench_samplers  # noqa: E402
import benchmarks.step_overhead as bench_overhead  # noqa: E402
import benchmarks.throughput as bench_throughput  # noqa: E402
import experiments.adaptive_schedule as adaptive_schedule  # noqa: E402
import experiments.convert_to_array_record as convert_records  # noqa: E402
import experiments.fd_noise as fd_noise  # noqa: E402
import experiments.masked_sampling as masked_sampling  # noqa: E402
import experiments.posthoc_ema as posthoc_ema  # noqa: E402
import experiments.sample as sample_script  # noqa: E402
import experiments.train_gaussian as tg  # noqa: E402
import experiments.train_masked as tm  # noqa: E402
from experiments import _cli  # noqa: E402


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def bad_files(tmp_path):
    """A folder of broken inputs: truncated .npy, junk .npz, a binary file, an unreadable image, a bad CIFAR batch."""
    d = tmp_path / "inputs"
    d.mkdir()
    good = d / "good.npy"
    np.save(good, np.zeros((10, 8, 8), np.uint8))
    (d / "truncated.npy").write_bytes(good.read_bytes()[:100])
    (d / "junk.npz").write_bytes(b"PK not really a zip")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (d / "images").mkdir()
    (d / "images" / "a.png").write_bytes(b"\x89PNG broken")
    (d / "cifar").mkdir()
    (d / "cifar" / "data_batch_1").write_bytes(pickle.dumps({"not": "cifar"}))
    (d / "cifar" / "test_batch").write_bytes(b"\x80\x04 truncated")
    (d / "a_file").write_text("I am a file")
    (d / "results").mkdir()
    (d / "results" / "summary.json").write_text('{"steps": 10}\n')
    (d / "results" / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    return d


# (script module, flags, substrings the one error line must contain)
GAUSSIAN = [
    (["--weighting", "sigmoid", "--weighting-param", "-50"], ["--weighting-param -50.0", "underflows"]),
    (["--weighting", "p2", "--weighting-param", "-100"], ["--weighting-param -100.0", "not finite"]),
    (["--sample-steps", "0"], ["`--sample-steps`", "got 0"]),
    (["--num-samples", "0"], ["`--num-samples`", "got 0"]),
    (["--steps", "0"], ["`--steps`", "got 0"]),
    (["--lr", "nan"], ["`--lr`", "nan"]),
    (["--lr", "-1e-3"], ["`--lr`", "-0.001"]),
    (["--ema-decay", "1.0"], ["`--ema-decay`", "1.0"]),
    (["--seed", "-1"], ["`--seed`", "-1"]),
    (["--seed", str(2**40)], ["`--seed`", "2**32"]),
    (["--batch-size", "0"], ["`--batch-size`", "got 0"]),
    (["--batch-size", "30", "--accum-steps", "4"], ["`--batch-size` (30)", "`--accum-steps` (4)"]),
    (["--schedule", "shifted_cosine", "--schedule-shift", "100"], ["--schedule-shift 100.0", "degenerate"]),
    (["--lam-min", "20"], ["`--lam-min`", "20.0"]),
    (["--lam-min", "nan"], ["`--lam-min`", "nan"]),
    (["--lam-min", "5", "--lam-max", "5"], ["--lam-min", "--lam-max", "5.0"]),
    (["--adaptive-decay", "1.5"], ["--adaptive-decay 1.5", "decay"]),
    (["--adaptive-bins", "0"], ["`--adaptive-bins`", "got 0"]),
    (["--width", "0"], ["`--width`", "got 0"]),
    (["--dropout", "1.0"], ["`--dropout`", "1.0"]),
    (["--unet-mults", "0", "2"], ["`--unet-mults`", "(0, 2)"]),
    (["--eval-every", "-1"], ["`--eval-every`", "-1"]),
    (["--checkpoint-every", "0"], ["`--checkpoint-every`", "got 0"]),
    (["--fsdp", "3"], ["`--fsdp`", "3"]),
    (["--process-id", "3", "--num-processes", "2"], ["`--process-id`", "got 3"]),
    (["--resume", "--overwrite"], ["--overwrite", "contradict"]),
    (["--data", "toy:two_moons"], ["`--data`", "'toy'"]),
    (["--batch-size", "4096"], ["`--batch-size` (4096)", "use at most 1500"]),
    (["--demo", "--preset", "quality"], ["`--demo` and `--preset quality` cannot be combined"]),
    (["--preset", "qualty"], ["`--preset`: Unknown preset 'qualty'", "Or `quality`"]),
]
MASKED = [
    (["--weighting", "sigmoid", "--weighting-param", "-50"], ["--weighting-param -50.0", "underflows"]),
    (["--schedule", "polynomial", "--schedule-param", "0"], ["--schedule-param 0.0", "positive"]),
    (["--dim", "30", "--num-heads", "4"], ["`--dim` (30)", "`--num-heads` (4)"]),
    (["--num-heads", "0"], ["`--num-heads`", "got 0"]),
    (["--data", "toy:checkerboard"], ["`--data`", "discrete"]),
    (["--demo", "--preset", "quality"], ["`--demo` and `--preset quality` cannot be combined"]),
]


def _run_script(module, argv: list[str], capsys, config=None) -> tuple[int, list[str], str]:
    cfg = tyro.cli(config or module.Config, args=argv)
    code, _ = _cli.call(module.main, cfg)
    out = capsys.readouterr()
    return code, [line for line in out.err.splitlines() if line.strip()], out.out


def _assert_refused(code, err, out, must, *, status=2):
    assert code == status, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err  # ONE line
    assert not out.strip(), out
    for text in must:
        assert text in err[0], (text, err[0])


@pytest.mark.parametrize("module, argv, must", [(tg, *c) for c in GAUSSIAN] + [(tm, *c) for c in MASKED])
def test_training_script_refuses_bad_flag_before_any_work(module, argv, must, tmp_path, capsys):
    work = tmp_path / "run"
    t0 = time.perf_counter()
    code, err, out = _run_script(module, ["--workdir", str(work), "--no-progress", *argv], capsys)
    _assert_refused(code, err, out, must)
    assert not work.exists(), "nothing may be written for a bad config"
    assert time.perf_counter() - t0 < 30, "refused in start-up validation, not after compiling"


@pytest.mark.parametrize(
    "name, must",
    [
        ("nope.npy", ["--data", "nope.npy", "does not exist"]),
        ("truncated.npy", ["truncated.npy", "Cannot read", "Is it complete"]),
        ("junk.npz", ["junk.npz", "Cannot read"]),
        ("binary.txt", ["binary.txt", "not a UTF-8 text file"]),
        ("images", ["a.png", "Cannot read the image"]),
        ("cifar", ["data_batch_1", "not a CIFAR-10 python batch"]),
    ],
)
def test_training_script_names_the_bad_data_file(name, must, bad_files, tmp_path, capsys):
    work = tmp_path / "run"
    code, err, out = _run_script(tg, ["--workdir", str(work), "--data", str(bad_files / name)], capsys)
    _assert_refused(code, err, out, must)
    assert not work.exists()


def test_training_script_refuses_unusable_workdirs(bad_files, capsys):
    before = _files(bad_files)
    code, err, out = _run_script(tm, ["--workdir", str(bad_files / "a_file")], capsys)
    _assert_refused(code, err, out, ["`--workdir`", "a_file", "is a file"])
    code, err, out = _run_script(tm, ["--workdir", str(bad_files / "a_file" / "sub")], capsys)
    _assert_refused(code, err, out, ["`--workdir`", "Cannot create"])
    code, err, out = _run_script(tg, ["--workdir", str(bad_files / "results")], capsys)
    _assert_refused(code, err, out, ["`--workdir`", "summary.json, metrics.jsonl", "--resume", "--overwrite"])
    code, err, out = _run_script(tg, ["--workdir", str(bad_files / "results"), "--resume"], capsys)
    _assert_refused(code, err, out, ["summary.json but no checkpoint", "--overwrite"])
    assert _files(bad_files) == before, "a refused command changes nothing"


def test_damaged_latest_checkpoint_is_reported_not_skipped(tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "10").mkdir()  # orbax lists a step folder as a checkpoint
    (ckpt / "20").write_text("a step folder replaced by a file")
    argv = ["--workdir", str(tmp_path / "run"), "--resume", "--no-progress"]
    code, err, out = _run_script(tg, argv, capsys)
    must = ["step 20", "checkpoints/20", "a file, not a checkpoint folder", "--resume-from 10"]
    _assert_refused(code, err, out, must)
    code, err, out = _run_script(tg, argv[:2] + ["--resume-from", "15"], capsys)
    _assert_refused(code, err, out, ["step 15", "complete steps on disk: 10"])


OTHER = [
    (adaptive_schedule, ["--num-steps", "0"], ["`--num-steps`", "got 0"]),
    (adaptive_schedule, ["--num-steps", "10", "--chunks", "30"], ["`--chunks` (30)", "`--num-steps` (10)"]),
    (adaptive_schedule, ["--num-points", "5000"], ["`--num-points`", "5000"]),
    (adaptive_schedule, ["--lam-min", "8", "--lam-max", "-10"], ["--lam-min", "--lam-max"]),
    (masked_sampling, ["--seed", "-3"], ["`--seed`", "-3"]),
    (sample_script, ["--workdir", "no_such_run"], ["`--workdir`", "no_such_run"]),
    (sample_script, ["--workdir", "no_such_run", "--steps", "0"], ["`--steps`", "got 0"]),
    (bench_samplers, ["--seed", "-1"], ["`--seed`", "got -1"]),
    (bench_variance, ["--lam-min", "5", "--lam-max", "5"], ["--lam-min", "--lam-max"]),
    (bench_variance, ["--samples", "0"], ["`--samples`", "got 0"]),
    (bench_overhead, ["--repeats", "0"], ["`--repeats`", "got 0"]),
    (bench_throughput, ["--big-steps", "0"], ["`--big-steps`", "got 0"]),
    (bench_capacity, ["--mfu", "2"], ["`--mfu`", "got 2.0"]),
    (bench_capacity, ["--presets", "vdm_imagenet"], ["--presets", "vdm_imagenet"]),
    (fd_noise, ["--sigmas", "-1"], ["`--sigmas`", "-1.0"]),
    (convert_records, ["--source", "digits", "--out", "recs", "--num-shards", "0"], ["`--num-shards`", "got 0"]),
    (posthoc_ema, ["--workdir", "no_such_run"], ["`--workdir`", "no_such_run"]),
    (posthoc_ema, ["--workdir", ".", "--sigma-rels", "0.9"], ["`--sigma-rels`", "0.9"]),
]


@pytest.mark.parametrize("module, argv, must", OTHER, ids=lambda v: getattr(v, "__name__", None))
def test_other_experiments_and_benchmarks_refuse_bad_flags(module, argv, must, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output folders are relative: nothing may appear here
    code, err, out = _run_script(module, argv, capsys, config=getattr(module, "Config", None) or module.Args)
    _assert_refused(code, err, out, must)
    assert not list(tmp_path.iterdir())


def test_out_folder_that_is_a_file(bad_files, capsys):
    cfg = tyro.cli(masked_sampling.Config, args=["--out", str(bad_files / "a_file")])
    code, _ = _cli.call(masked_sampling.main, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "`--out`" in err[0] and "a_file" in err[0]


def test_debug_shows_the_traceback(tmp_path):
    cfg = tyro.cli(tg.Config, args=["--workdir", str(tmp_path / "r"), "--steps", "0", "--debug"])
    with pytest.raises(_cli.ConfigError, match="`--steps`"):
        _cli.call(tg.main, cfg)


# --- the library -----------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _library_cases(d: pathlib.Path):
    x = jnp.zeros((4, 3))
    nan_x = x.at[1, 2].set(jnp.nan)
    zero = lambda z, lam: jnp.zeros_like(z)  # noqa: E731
    cos, sig = vd.schedules.Cosine(-10.0, 10.0), vd.weighting.Sigmoid(2.0)
    a = vd.adaptive.AdaptiveSchedule(-10.0, 10.0, num_bins=8)
    loop = vd.train.LoopConfig(steps=2, progress=False)
    loss, opt = vd.train.GaussianLoss(sig, cos, num_levels=17), vd.train.make_optimizer(1e-3, 0, 2)
    calibrate = ft.partial(vd.adaptive.calibrate, key=jr.key(0), num_steps=1, batch_size=2)
    nan_t = jnp.full(4, jnp.nan)
    fit = ft.partial(vd.train.fit, zero, loss, opt, [], loop=loop, workdir=d / "r", config={}, key=jr.key(0))
    w = vd.weighting
    return [
        (lambda: w.check_on_range(w.Sigmoid(-50.0), -10.0, 6.2), ValueError, "k=-50.0.*underflows"),
        (lambda: w.check_on_range(w.P2(-100.0), -10.0, 6.2), ValueError, "gamma=-100.0.*not finite"),
        (lambda: vd.weighting.check_on_range(sig, 5.0, -5.0), ValueError, "lam_min < lam_max"),
        (lambda: vd.weighting.is_monotonic(sig, -jnp.inf, 1.0), ValueError, "`lam_min`.*finite"),
        (lambda: vd.schedules.check_numerics(vd.schedules.ShiftedCosine(100.0, -10.0, 6.0)), ValueError, "shift=100.0"),
        (lambda: w.check_on_range(sig, float("nan"), 1.0), ValueError, "`lam_min` of check_on_range must be finite"),
        (lambda: vd.losses.weighted_loss(zero, nan_x, key=jr.key(0), schedule=cos, weighting=sig), ValueError, "`x`"),
        (lambda: vd.losses.weighted_loss_at(zero, x, nan_t, x, schedule=cos, weighting=sig), ValueError, "`t` must"),
        (lambda: vd.losses.discrete_loss(zero, nan_x, key=jr.key(0), schedule=cos, num_steps=4), ValueError, "`x`"),
        (lambda: calibrate(a, a.init(), zero, nan_x, weighting=sig), Exception, "`data` must be finite"),
        (lambda: vd.train.make_optimizer(float("inf"), 0, 10), ValueError, "`lr` must be positive and finite"),
        (lambda: vd.train.LoopConfig(steps=10, eval_every=-1), ValueError, "`eval_every`"),
        (lambda: vd.data.load(d / "truncated.npy"), ValueError, "truncated.npy"),
        (lambda: vd.data.load(d / "junk.npz"), ValueError, "junk.npz"),
        (lambda: vd.data.load(d / "binary.txt"), ValueError, "binary.txt is not a UTF-8"),
        (lambda: vd.data.load(d / "images"), ValueError, "a.png"),
        (lambda: vd.data.load(d / "cifar"), ValueError, "data_batch_1"),
        (lambda: vd.train.claim_workdir(d / "a_file"), vd.train.WorkdirError, "is a file"),
        (lambda: vd.train.claim_workdir(d / "results"), vd.train.WorkdirError, "earlier run"),
        (lambda: vd.train.claim_workdir(d / "x", resume=True, overwrite=True), ValueError, "contradict"),
        (lambda: fit(resume_from=3), vd.train.CheckpointError, "nothing to resume"),
        (lambda: fit(sample_shape=(4, 8), sample_steps=0), ValueError, "`sample_steps`"),
    ]


def test_library_rejects_bad_input_with_a_clear_error(bad_files):
    before = _files(bad_files)
    cases = _library_cases(bad_files)
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert len(cases) >= 20
    assert _files(bad_files) == before and not (bad_files / "r").exists() and not (bad_files / "x").exists()


def test_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    import json
    import socket

    work = tmp_path / "run"
    work.mkdir()
    pid = _dead_pid()
    (work / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then"}))
    with vd.train.claim_workdir(work) as lock:
        assert json.loads((work / "run.lock").read_text())["pid"] == os.getpid()
        assert lock.path == work.resolve()
    assert f"stale lock {work / 'run.lock'} of PID {pid}" in capsys.readouterr().err
    assert not (work / "run.lock").exists()


# --- through real processes: the exit status and nothing else on the terminal ------------------------


def _cli_run(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_scripts_exit_2_with_one_line(tmp_path):
    g = _cli_run([str(ROOT / "experiments/train_gaussian.py"), "--workdir", "w", "--weighting-param", "-50"], tmp_path)
    assert g.returncode == 2 and g.stdout == "", g
    assert g.stderr.count("\n") == 1 and "--weighting-param -50.0" in g.stderr and "underflows" in g.stderr, g
    m = _cli_run([str(ROOT / "experiments/train_masked.py"), "--workdir", "w", "--lr", "nan"], tmp_path)
    assert m.returncode == 2 and m.stderr.startswith("error: `--lr` must be") and m.stderr.count("\n") == 1, m
    (tmp_path / "f").write_text("x")
    r = _cli_run([str(ROOT / "experiments/reproduce/fig2_schedules.py"), "--out", "f"], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: `--out` f is a file") and r.stderr.count("\n") == 1, r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"], "nothing written"


def test_benchmark_help_answers_without_running(tmp_path):
    t0 = time.perf_counter()
    h = _cli_run([str(ROOT / "benchmarks/throughput.py"), "--help"], tmp_path)
    assert h.returncode == 0 and "--big-steps" in h.stdout and '"benchmark"' not in h.stdout, h
    assert time.perf_counter() - t0 < 60 and not list(tmp_path.iterdir())
