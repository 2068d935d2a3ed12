"""Fast versions of the reproduce scripts' acceptance checks (Table 1 rows against their closed forms)."""

import importlib.util
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest


_DIR = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "reproduce"


def _load(name: str):
    sys.path.insert(0, str(_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"reproduce_{name}", _DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(_DIR))


table1 = _load("table1_equivalences")
ROWS = table1.rows()


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_table1_row_matches_closed_form(row):
    # Acceptance 3 (fast): implied w(lambda) of each native loss = constant x closed form within 1e-3 on [-10, 10]
    name, sched, kind, native_weight, closed, expected, _ = row
    lam = np.linspace(-10.0, 10.0, 41)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        w_num = table1.implied_weighting(sched, kind, native_weight, jnp.asarray(lam), jr.key(0))
    ratio = w_num / closed(lam)
    const = float(np.median(ratio))
    assert np.max(np.abs(ratio / const - 1)) < 1e-3, name
    assert const == pytest.approx(expected, rel=1e-6), name


def test_table1_constants_are_the_documented_ones():
    consts = {r[0].split(":")[0]: r[5] for r in ROWS}
    assert consts["v-prediction MSE, cosine"] == pytest.approx(2 / math.pi)
    assert consts["EDM"] == pytest.approx(8.0)  # 2 / sigma_data^2
