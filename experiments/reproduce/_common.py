"""Shared helpers of the reproduce scripts: `--out` parsing and atomic PNG/JSON writes (not a script)."""

import argparse
import json
import math
import os
import pathlib
import tempfile

import numpy as np


def out_dir(name: str, description: str) -> pathlib.Path:
    """Parse `--out` (default `runs/reproduce/<name>/`) and create it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/reproduce") / name)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _atomic(path: pathlib.Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results should be readable like any other output
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(path: pathlib.Path, obj) -> None:
    """Write `obj` as indented JSON, atomically (NaN/inf become strings)."""
    text = json.dumps(_clean(obj), indent=2, allow_nan=False).encode()
    _atomic(path, lambda f: f.write(text))


def save_fig(fig, path: pathlib.Path) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
