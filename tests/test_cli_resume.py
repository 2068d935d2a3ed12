"""Kill a training run from the command line with SIGKILL after a checkpoint, rerun the same command with
`--resume`, and compare with an uninterrupted run: summary numbers, parameters, the post-hoc EMAs and their
snapshots equal bit for bit. The masked run reads ArrayRecord files with a grain worker process."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]

# Loaded through PYTHONPATH as `sitecustomize`: slows each batch of vd.data.pipeline by 50 ms, so the parent can
# kill the run between two checkpoints. The command line itself is exactly what a user types.
_SLOW_PIPELINE = """
import time
import grain
import vdmpp.data


class _Slow(grain.transforms.Map):
    def map(self, x):
        time.sleep(0.05)
        return x


_pipeline = vdmpp.data.pipeline
vdmpp.data.pipeline = lambda *a, **k: _pipeline(*a, **k).map(_Slow())
"""

# Entries that depend on the clock, the output folder or whether the run was resumed; everything else must match.
_TIMING = {"train_seconds_this_session", "train_cpu_seconds_this_session", "resumed_from", "files", "config"}

SCRIPTS = {
    "train_gaussian.py": ["--width", "32", "--depth", "1", "--batch-size", "32", "--sample-steps", "4"],
    "train_masked.py": ["--dim", "16", "--depth", "1", "--num-heads", "2", "--batch-size", "16", "--sample-steps", "4"]
    + ["--num-workers", "1"],
}


def _command(script: str, workdir: pathlib.Path, data: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "experiments" / script),
        "--workdir",
        str(workdir),
        "--data",
        data,
        "--snapshot-every",
        "5",
        "--steps",
        "30",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "0",
        "--eval-examples",
        "32",
        "--num-samples",
        "4",
        "--eval-samples",
        "0",  # the sample-quality hook is tested in test_sample_eval.py (here it would train a classifier)
        "--no-progress",
        *SCRIPTS[script],
    ]


def _params(workdir: pathlib.Path, step: int) -> dict:
    mgr = ocp.CheckpointManager(workdir / "checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
        return mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        mgr.close()


# CI runs the Gaussian script; the masked one (ArrayRecord data, a grain worker) is in `make test-all` (CI time).
@pytest.mark.parametrize(
    "script", [pytest.param(s, marks=pytest.mark.slow) if s == "train_masked.py" else s for s in sorted(SCRIPTS)]
)
def test_sigkill_then_resume_from_the_command_line_is_bitwise(script, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_PIPELINE)
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{ROOT}",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    data = "digits"
    if script == "train_masked.py":  # the same digits as ArrayRecord files, read by a grain worker process
        import vdmpp as vd

        vd.data.write_records(vd.data.load("digits"), tmp_path / "records", num_shards=2)
        data = str(tmp_path / "records" / "*.array_record")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(script, straight, data), check=True, env=env, timeout=300, capture_output=True)

    proc = subprocess.Popen(
        _command(script, killed, data), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = killed / "checkpoints" / "10"
    deadline = time.time() + 300
    while not first.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert first.is_dir() and not (killed / "checkpoints" / "30").exists() and not (killed / "summary.json").exists()

    resumed = subprocess.run(
        _command(script, killed, data) + ["--resume"], check=True, env=env, timeout=300, capture_output=True, text=True
    )
    assert "Resumed from" in resumed.stdout

    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert b["resumed_from"] in (10, 20) and a["resumed_from"] is None
    assert {k: v for k, v in a.items() if k not in _TIMING} == {k: v for k, v in b.items() if k not in _TIMING}
    assert a["config"]["maths"] == b["config"]["maths"] and np.isfinite(a["test_bpd"])
    pa, pb = _params(straight, 30), _params(killed, 30)
    assert sorted(pa) == sorted(pb) and len(pa) > 5
    for name in pa:
        assert pa[name].dtype == pb[name].dtype and np.array_equal(pa[name], pb[name]), name
    snaps = sorted(p.name for p in (straight / "ema_snapshots").iterdir())
    assert snaps == [f"{s:010d}.npz" for s in range(5, 31, 5)]
    assert sorted(p.name for p in (killed / "ema_snapshots").iterdir()) == snaps
    for name in snaps:  # the post-hoc EMAs (sigma_rel 0.05 and 0.10) at every snapshot, bit for bit
        with np.load(straight / "ema_snapshots" / name) as a, np.load(killed / "ema_snapshots" / name) as b:
            assert sorted(a.files) == sorted(b.files) and len(a.files) > 3
            assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a.files), name
