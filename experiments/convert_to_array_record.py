"""Convert a data set to ArrayRecord files, for lazy, sharded reading at scale (`--data OUT/*.array_record`).

    python experiments/convert_to_array_record.py --source digits --out data/digits
    python experiments/convert_to_array_record.py --source cifar-10-batches-py --out data/cifar10 --num-shards 16
    python experiments/convert_to_array_record.py --source text8 --out data/text8 --seq-len 256 \
        --alphabet " abcdefghijklmnopqrstuvwxyz"

`--source` is anything `vdmpp.data.load` reads: a built-in name (digits, mnist, fashion_mnist, toy:...), a
.npy/.npz file, a folder of images (one subfolder per class for labels), CIFAR-10's python batches or a text
file. Writes OUT/NAME-{train,test}-SSSSS-of-NNNNN.array_record in the record format of the how-to "Data"
(a header record with shape, dtype, levels or vocabulary, split; one record per example) and refuses to
overwrite existing files.
"""

import dataclasses
import pathlib
import sys

import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """What to convert and where."""

    source: str
    """A vdmpp.data name or path (see vdmpp.data.load)."""
    out: str
    """Output folder."""
    name: str | None = None
    """File name stem (default: from the source's name)."""
    num_shards: int = 1
    """Files per split; use about one per host (or more) for large data."""
    seq_len: int = 256
    """Text: characters per sequence."""
    alphabet: str | None = None
    """Text: the alphabet (token id i is alphabet[i]); default: the file's sorted characters."""
    test_fraction: float = 0.1
    """Data without its own split: the fraction held out as test (fixed seed 0)."""
    root: str | None = None
    """mnist / fashion_mnist: the folder with the IDX files."""
    progress: bool = True
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def main(cfg: Config) -> list[pathlib.Path]:
    """Load `cfg.source`, write its splits as ArrayRecord files, print what was written."""
    _cli.at_least(cfg, 1, "num_shards", "seq_len")
    _cli.in_range(cfg, "test_fraction", 0.0, 1.0, closed="()")
    data = vd.data.load(
        cfg.source, seq_len=cfg.seq_len, alphabet=cfg.alphabet, test_fraction=cfg.test_fraction, root=cfg.root
    )
    paths = vd.data.write_records(data, cfg.out, name=cfg.name, num_shards=cfg.num_shards, progress=cfg.progress)
    size = sum(p.stat().st_size for p in paths)
    levels = f"vocabulary {data.num_levels}" if data.kind == "text" else f"{data.num_levels} levels"
    print(f"{data.name}: {data.kind}, example shape {data.example_shape}, {data.train.dtype}, {levels}")
    print(f"train {len(data.train)} and test {len(data.test)} examples -> {len(paths)} files, {size / 2**20:.1f} MiB")
    print(f"in {pathlib.Path(cfg.out).absolute()}; train with --data '{cfg.out}/*.array_record'")
    return paths


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
