"""One rank of the data-parallel test, run under ``python -m paddle.distributed.launch``.

Each rank seeds its model differently, so identical parameters afterwards prove that
DataParallel broadcast rank 0's; SGD (not Adam, whose first step is scale-invariant) makes a
wrong gradient reduction visible. Rank 0 also takes the single-process step on the whole
batch. With ``--collectives`` the ranks then exercise every XCCL collective with per-rank
values. Results go to ``<out>/rank<R>.npz`` (and ``reference.npz``) for the test to compare.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

BATCH, FEATURES, HIDDEN, OUTPUTS = 8, 8, 16, 4


def make_model(seed: int):
    import paddle

    paddle.seed(seed)
    return paddle.nn.Sequential(
        paddle.nn.Linear(FEATURES, HIDDEN), paddle.nn.Tanh(), paddle.nn.Linear(HIDDEN, OUTPUTS)
    )


def sgd_step(model, inputs, targets, parameters) -> float:
    import paddle

    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=parameters)
    loss = paddle.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    opt.step()
    opt.clear_grad()
    return float(loss)


def state(model) -> dict[str, np.ndarray]:
    return {name: p.numpy() for name, p in model.state_dict().items()}


def collectives(rank: int, world: int) -> dict[str, np.ndarray]:
    """Run each collective with rank-dependent inputs; return what this rank received."""
    import paddle
    import paddle.distributed as dist
    from paddle.distributed import ReduceOp

    out: dict[str, np.ndarray] = {}
    n = 3001  # odd, and larger than the small staging chunk the test configures
    base = np.arange(n, dtype=np.float32)

    # The mean the way DataParallel takes it. (ReduceOp.AVG cannot be used here: on a
    # CPU-only wheel dist.all_reduce(op=AVG) fails on paddle.base.core.nccl_version, and
    # ProcessGroupCustom rejects AVG; tests/scripts/xccl_driver.cc covers the plugin's AVG.)
    t = paddle.to_tensor(base * (rank + 1))
    dist.all_reduce(t)
    out["mean_f32"] = (t / world).numpy()
    for dtype in ("float64", "float16", "bfloat16", "int32", "int64"):
        for name, op in (("sum", ReduceOp.SUM), ("max", ReduceOp.MAX), ("min", ReduceOp.MIN), ("prod", ReduceOp.PROD)):
            values = (np.arange(64) % 7 + rank + 1).astype(np.float32)
            t = paddle.to_tensor(values).astype(dtype)
            dist.all_reduce(t, op=op)
            out[f"{name}_{dtype}"] = t.astype("float64").numpy()

    t = paddle.to_tensor(base + 100 * rank)
    dist.broadcast(t, src=world - 1)
    out["broadcast"] = t.numpy()

    gathered: list = []
    dist.all_gather(gathered, paddle.to_tensor(base[:257] + 1000 * rank))
    out["all_gather"] = np.stack([g.numpy() for g in gathered])

    t = paddle.to_tensor(np.concatenate([base[:300] * (rank + 1) + r for r in range(world)]))
    recv = paddle.zeros([300], dtype="float32")
    dist.reduce_scatter(recv, t)
    out["reduce_scatter"] = recv.numpy()

    t = paddle.to_tensor(base * (rank + 1))
    dist.reduce(t, dst=world - 1)
    out["reduce"] = t.numpy()

    big = 40000  # bytes stream through a ring far smaller than the message
    if rank == 0:
        dist.send(paddle.to_tensor(np.arange(big, dtype=np.float32)), dst=1)
    elif rank == 1:
        t = paddle.zeros([big], dtype="float32")
        dist.recv(t, src=0)
        out["recv"] = t.numpy()
    dist.barrier()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", required=True, help="spec for paddle_medvl.device.setup_device")
    parser.add_argument("--out", required=True)
    parser.add_argument("--collectives", action="store_true")
    args = parser.parse_args()

    from paddle_medvl.device import setup_device

    device = setup_device(args.device)
    import paddle
    import paddle.distributed as dist

    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()

    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((BATCH * world, FEATURES)).astype(np.float32)
    targets = rng.standard_normal((BATCH * world, OUTPUTS)).astype(np.float32)
    local = slice(rank * BATCH, (rank + 1) * BATCH)

    model = make_model(seed=rank)  # deliberately different per rank
    dp_model = paddle.DataParallel(model)
    loss = sgd_step(dp_model, paddle.to_tensor(inputs[local]), paddle.to_tensor(targets[local]), model.parameters())
    result = {f"param/{k}": v for k, v in state(model).items()}
    result["loss"] = np.array(loss)
    result["place"] = np.array(str(next(iter(model.parameters())).place))
    result["backend"] = np.array(os.environ.get("PADDLE_DISTRI_BACKEND", ""))
    result["device_backend"] = np.array(device.backend)

    if args.collectives:
        result.update({f"coll/{k}": v for k, v in collectives(rank, world).items()})
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **result)

    if rank == 0:
        reference = make_model(seed=0)
        sgd_step(reference, paddle.to_tensor(inputs), paddle.to_tensor(targets), reference.parameters())
        np.savez(os.path.join(args.out, "reference.npz"), **{f"param/{k}": v for k, v in state(reference).items()})


if __name__ == "__main__":
    main()
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:  # as tools/train.py: Paddle's teardown under
        sys.stdout.flush()  # launch can abort a finished rank (workarounds.py)
        sys.stderr.flush()
        os._exit(0)
