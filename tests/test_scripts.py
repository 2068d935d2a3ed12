"""Smoke tests of the adaptive-schedule experiment and benchmark at tiny sizes (their outputs are well-formed)."""

import json
import pathlib
import sys

import numpy as np
import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.adaptive_variance as bench  # noqa: E402
import experiments.adaptive_schedule as exp  # noqa: E402


def test_adaptive_schedule_experiment_tiny(tmp_path):
    cfg = exp.Config(
        workdir=tmp_path / "run",
        num_points=16,
        denoiser="trained",
        train_steps=3,
        num_bins=10,
        num_steps=8,
        batch_size=32,
        chunks=2,
        reference_samples=16,
        weightings=("elbo",),
    )
    exp.main(cfg)
    assert (tmp_path / "run" / "adaptive_schedule.png").stat().st_size > 0
    summary = json.loads((tmp_path / "run" / "adaptive_schedule.json").read_text())
    edges = np.asarray(summary["bin_edges"])
    r = summary["results"]["elbo"]
    width = np.diff(edges)
    assert len(r["density"]) == 10 and np.all(np.asarray(r["density"]) > 0)
    np.testing.assert_allclose(np.sum(np.asarray(r["density"]) * width), 1.0, rtol=1e-5)  # a density on the bins
    np.testing.assert_allclose(np.sum(np.asarray(r["target_density"]) * width), 1.0, rtol=1e-5)
    assert not list((tmp_path / "run").glob(".*")), "no temporary files left behind"


@pytest.mark.slow  # ~60 s of compilation (4 models x 3 weightings); its flags are checked in test_bad_input
def test_adaptive_variance_benchmark_tiny(capsys):
    cfg = bench.Config(
        num_points=16, num_bins=10, calibrate_steps=4, batch_size=32, samples=4, mlp_width=16, train_steps=3
    )
    record = bench.main(cfg)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(record))
    for name in ("oracle", "oracle_digits", "mlp_untrained", "mlp_trained"):
        for w in ("elbo", "sigmoid2", "edm_monotonic"):
            out = record[name][w]
            ratios = [v for k, v in out.items() if k.startswith("ratio")]
            assert len(ratios) == 6 and all(np.isfinite(ratios)) and all(r > 0 for r in ratios), (name, w, out)
    # For the same draws, p ∝ sqrt(mean v²) per bin minimises the stratified variance (Cauchy–Schwarz).
    for w in ("elbo", "sigmoid2", "edm_monotonic"):
        out = record["mlp_untrained"][w]
        assert out["ratio_fixed_point_moment2"] <= out["ratio_fixed_point"] * (1 + 1e-6)
