"""Save, load and cache feature networks (orbax), keyed on a fingerprint of the data set they were trained on."""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import orbax.checkpoint as ocp

from .._io import atomic_write_json
from .._misc import check_nonnegative_int
from ..nn import Classifier
from ._extractor import FeatureNetwork
from ._training import ClassifierConfig, data_fingerprint, train_feature_network


_META = "feature_network.json"
_PARAMS = "params"
_FORMAT = 1


def default_cache_dir() -> pathlib.Path:
    """`$VDMPP_CACHE_DIR`, else `.cache/vdmpp` in the repository (a source checkout), else `~/.cache/vdmpp`."""
    env = os.environ.get("VDMPP_CACHE_DIR")
    if env:
        return pathlib.Path(env)
    repo = pathlib.Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "vdmpp"
    return pathlib.Path.home() / ".cache" / "vdmpp"


def _checkpointer() -> ocp.StandardCheckpointer:
    # only this process reads/writes (no collective barriers): every process can build the network itself
    pid = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=pid, active_processes={pid})
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def _skeleton(meta: dict) -> Classifier:
    fp, cfg = meta["fingerprint"], meta["config"]
    return eqx.filter_eval_shape(
        Classifier,
        fp["example_shape"][-1],
        fp["num_classes"],
        widths=tuple(cfg["widths"]),
        feature_dim=cfg["feature_dim"],
        key=jr.key(0),
    )


def save_feature_network(directory: str | os.PathLike, net: FeatureNetwork, info: dict[str, Any]) -> None:
    """Write a trained network to `directory`: orbax parameters, then `feature_network.json` (written last,
    atomically, so a directory without it is incomplete). `info` is what `train_feature_network` returned."""

    if not isinstance(net, FeatureNetwork):
        raise TypeError(f"`net` must be a FeatureNetwork; got {type(net).__name__}.")
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _META).unlink(missing_ok=True)
    leaves = [np.asarray(x) for x in jtu.tree_leaves(eqx.filter(net.classifier, eqx.is_array))]
    ckpt = _checkpointer()
    ckpt.save(directory / _PARAMS, {f"{i:04d}": x for i, x in enumerate(leaves)}, force=True)
    ckpt.wait_until_finished()
    meta = {"format": _FORMAT, **{k: v for k, v in info.items() if k != "config"}, "config": info["config"]}
    atomic_write_json(directory / _META, json.loads(json.dumps(meta)))


def _describe(fp: dict) -> str:
    shape = "x".join(map(str, fp["example_shape"]))
    return (
        f"{fp['name']!r} ({shape}, {fp['num_levels']} levels, {fp['num_classes']} classes, sha256 {fp['sha256'][:12]}…)"
    )


def load_feature_network(directory: str | os.PathLike, dataset: Any) -> FeatureNetwork:
    """Load a network saved by `save_feature_network` (or `experiments/train_classifier.py`) for `dataset`.

    Raises:
        FileNotFoundError: no complete network in `directory`.
        ValueError: the network was trained on another data set, shape or number of levels (its
            fingerprint differs from `dataset`'s): it is never silently reused.
    """
    directory = pathlib.Path(directory).absolute()
    meta_path = directory / _META
    if not meta_path.is_file():
        raise FileNotFoundError(f"No feature network in {directory} (missing {_META}; an interrupted save?).")
    meta = json.loads(meta_path.read_text())
    want = data_fingerprint(dataset)
    have = meta.get("fingerprint", {})
    if meta.get("format") != _FORMAT or have != want:
        diffs = [f"{k}: network has {have.get(k)!r}, data has {want[k]!r}" for k in want if have.get(k) != want[k]]
        raise ValueError(
            f"The feature network in {directory} was trained on {_describe(have) if have else 'unknown data'}, "
            f"not on this data set {_describe(want)}:\n  " + "\n  ".join(diffs) + "\nPoint at the network of this "
            "data set, or build one with `vd.metrics.feature_network(dataset)` (trains and caches it)."
        )
    skeleton = _skeleton(meta)
    arrays, static = eqx.partition(skeleton, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    leaves, treedef = jtu.tree_flatten(arrays)
    target = {f"{i:04d}": np.zeros(x.shape, x.dtype) for i, x in enumerate(leaves)}
    try:
        flat = _checkpointer().restore(directory / _PARAMS, target)
    except Exception as e:  # orbax raises many types; re-raise one clear error
        raise ValueError(f"Cannot read the feature network's parameters in {directory / _PARAMS}: {e}") from e
    params = [jax.numpy.asarray(flat[f"{i:04d}"]) for i in range(len(leaves))]
    classifier = eqx.combine(jtu.tree_unflatten(treedef, params), static)
    return FeatureNetwork(
        classifier,
        num_levels=want["num_levels"],
        example_shape=tuple(want["example_shape"]),
        data_name=want["name"],
        fingerprint=want["sha256"],
    )


def _entry(root: pathlib.Path, fp: dict, seed: int, config: ClassifierConfig) -> pathlib.Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", pathlib.Path(fp["name"]).name or "data")[:40]
    key = json.dumps({"data": fp["sha256"], "seed": seed, "config": dataclasses.asdict(config)}, sort_keys=True)
    return root / "feature_networks" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _as_dataset(dataset: Any) -> Any:
    if isinstance(dataset, (str, os.PathLike)):
        from ..data import load

        return load(dataset)
    return dataset


def feature_network_path(
    dataset: Any,
    *,
    seed: int = 0,
    config: ClassifierConfig = ClassifierConfig(),
    cache_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """The cache folder [`vdmpp.metrics.feature_network`][] uses for these arguments (it may not exist yet)."""
    dataset = _as_dataset(dataset)
    seed = check_nonnegative_int(seed, "seed")
    root = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
    return _entry(root, data_fingerprint(dataset), seed, config)


def feature_network(
    dataset: Any,
    *,
    seed: int = 0,
    config: ClassifierConfig = ClassifierConfig(),
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> FeatureNetwork:
    """The feature network of a labelled image data set: loaded from the cache, or trained and cached on first use.

    The cache entry is keyed on the data's fingerprint (name, shape, levels, classes and a SHA-256 of the
    arrays), the seed and the config, and is verified on load, so a network of another data set or shape
    is never reused. Nothing is downloaded. In a multi-process run every process loads or trains the
    network (training is deterministic, so all get the same one) and process 0 writes the cache.

    Args:
        dataset: a `vdmpp.data.Dataset` of labelled images, or a name for `vd.data.load` (e.g. `"digits"`).
        seed: seed of the training run.
        config: the classifier's hyperparameters.
        cache_dir: the cache root (default: `$VDMPP_CACHE_DIR` or the repository's `.cache/vdmpp`).
        progress: show a progress bar while training.
    """
    dataset = _as_dataset(dataset)
    entry = feature_network_path(dataset, seed=seed, config=config, cache_dir=cache_dir)
    if (entry / _META).is_file():
        return load_feature_network(entry, dataset)
    net, info = train_feature_network(dataset, seed=seed, config=config, progress=progress)
    if jax.process_index() == 0:  # every process trains the same network (deterministic); one writes it
        if entry.exists():  # an incomplete earlier save
            shutil.rmtree(entry)
        save_feature_network(entry, net, info)
    return net
