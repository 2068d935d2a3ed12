"""One process of the two-process data-sharding test: the training scripts' input pipeline over ArrayRecord files.

Usage: python tests/_shard_worker.py PORT PROCESS_ID RECORDS_GLOB OUT.json

Builds the pipeline exactly as `experiments/_launch.training_setup` does under `jax.distributed` (per-process
batch, `shard_index=jax.process_index()`), takes one epoch of this process's batches, and records the rows it
yielded and every record index the process read from the files.
"""

import json
import pathlib
import sys

import jax


ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(port: str, pid: int, pattern: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import vdmpp as vd
    from experiments import _launch

    data = vd.data.load(pattern)
    read: list[int] = []
    cls = type(data.train.source)  # pyright: ignore[reportAttributeAccessIssue]  (a RecordArray's source)
    get, read_many = cls.__getitem__, cls.read

    def logged_get(self, index):
        read.append(int(index))
        return get(self, index)

    def logged_read(self, indices):
        read.extend(int(i) for i in indices)
        return read_many(self, indices)

    cls.__getitem__, cls.read = logged_get, logged_read
    cfg = _launch.RunConfig(workdir="unused", data=pattern, batch_size=8, steps=8, seed=0)
    _, dataset, _ = _launch.training_setup(cfg, data.train)
    it = iter(dataset)
    per_process = cfg.batch_size // jax.process_count()
    batches = [next(it)["x"] for _ in range(data.train.shape[0] // cfg.batch_size)]  # one epoch of this shard
    rows = np.concatenate(batches)[:, 0].astype(int).tolist()
    with open(out, "w") as f:
        json.dump({"rows": rows, "read": sorted(set(read)), "batch": per_process, "count": jax.process_count()}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
