"""benchmarks/capacity.py on a reduced preset: one JSON line equal to the written results, every mesh, and the
state bytes per device against closed forms (float32 parameters, two Adam moments, the EMA, two post-hoc EMAs)."""

import json
import pathlib
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.capacity as capacity  # noqa: E402
from experiments._presets import get_preset  # noqa: E402


def test_capacity_of_a_reduced_preset(tmp_path, capsys):
    out = capacity.main(capacity.Config(out=tmp_path, mfu=0.5, presets=("md4_text8_tiny",)))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == json.loads((tmp_path / "capacity.json").read_text())
    [r] = out["results"]
    n = get_preset("md4_text8_tiny").num_parameters()
    assert r["num_parameters"] == n and r["flops_per_example"] > 0 and r["activation_bytes_per_example"] > 0
    assert r["activation_bytes_per_example_remat"] < r["activation_bytes_per_example"]
    rows = {(row["devices"], row["mesh"]["fsdp"]): row for row in r["rows"]}
    assert set(rows) == {(1, 1), (8, 1), (8, 8), (64, 1), (64, 8), (64, 64), (256, 1), (256, 8), (256, 256)}
    one = rows[(1, 1)]["bytes_per_device"]
    assert one["params"] == one["ema"] == one["gradients"] == 4 * n and one["posthoc_emas"] == 8 * n
    assert 8 * n <= one["optimizer"] <= 8 * n + 64  # two float32 moments (+ Adam's step counters)
    # every leaf of the reduced model is below Sharding's fsdp_min_size, so FSDP leaves it replicated
    assert all(row["bytes_per_device"] == one for row in rows.values())
    # the implied step time: FLOPs per device over (peak x utilisation)
    row = rows[(8, 1)]
    peak = capacity.ACCELERATORS["TPU v5p"][0]
    assert abs(row["step_seconds"]["TPU v5p"] - row["flops_per_device_per_step"] / (0.5 * peak)) < 1e-15
    assert row["batch_per_device"] * 8 == row["global_batch"] >= get_preset("md4_text8_tiny").batch_size
