"""One process of the two-process `jax.distributed` test: 5 data-parallel steps, results to JSON.

Usage: python tests/_multihost_worker.py PORT PROCESS_ID OUT.json   (2 local CPU devices per process)
"""

import json
import sys

import jax


def main(port: str, pid: int, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    import jax.random as jr
    import numpy as np
    import vdmpp as vd

    from _train_standins import fake_data, TinyDenoiser

    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    sharding = vd.train.Sharding(vd.train.make_mesh(1))
    model = TinyDenoiser(16, 64, key=jr.key(3))
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), vd.schedules.Cosine(-10.0, 10.0), num_levels=17)
    opt = vd.train.make_optimizer(1e-2, 1, 20)
    state = sharding.shard_state(vd.train.init_train_state(model, opt, loss, key=jr.key(4)))
    step = vd.train.make_train_step(loss, opt, ema_decay=0.9, sharding=sharding)
    data = fake_data(5 * 16)
    losses = []
    for i in range(5):
        rows = data[i * 16 : (i + 1) * 16][pid * 8 : (pid + 1) * 8]  # this process's half of the global batch
        b = sharding.shard_batch({"x": rows})
        state, m = step(state, b)
        losses.append(float(vd.train.replicate_to_host(m["loss"])))
    w = vd.train.replicate_to_host(state.model.mlp.layers[0].weight)
    # the full loop on two processes: sharded data, orbax checkpoint from both processes, EMA evaluation
    data_pipe = vd.data.pipeline(fake_data(64), batch_size=8, seed=0, shard_index=pid, shard_count=2)
    loop = vd.train.LoopConfig(steps=2, checkpoint_every=2, log_every=1, progress=False, tensorboard=False)
    summary = vd.train.fit(
        model,
        loss,
        opt,
        data_pipe,
        loop=loop,
        workdir=out + ".run",
        config={"maths": {"model": 1}},
        key=jr.key(5),
        test_data=fake_data(20),
        sharding=sharding,
    )
    if pid == 0:
        with open(out, "w") as f:
            json.dump({"losses": losses, "w": np.asarray(w).tolist(), "fit_bpd": summary["test_bpd"]}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
