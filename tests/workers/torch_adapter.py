"""Worker for tests/test_torch_adapter.py: hvdtrain.torch against single-process references.

Models and data live on ``ctx.device``: the CPU here, this rank's GPU on a GPU host (``hvdtrain
gpu-check``), where the same checks then cover Horovod's NCCL allreduce."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import copy  # noqa: E402

import horovod.torch as hvd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import hvdtrain.torch as ht  # noqa: E402
from hvdtrain.core.options import Compression  # noqa: E402
from hvdtrain.torch.compression import COMPRESSORS  # noqa: E402
from tests.workers.common import parse_args, report  # noqa: E402

torch.set_default_dtype(torch.float64)
args = parse_args(mode=str, ckpt=str, steps=int)
ctx = ht.init(seed=100)  # seed + rank: every rank starts from different random weights
GLOBAL_BATCH = 8


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        ctx.device
    )


def data(n: int = 400):
    gen = torch.Generator().manual_seed(7)  # identical on every rank
    return torch.randn(n, 5, generator=gen).to(ctx.device), torch.randn(n, 3, generator=gen).to(
        ctx.device
    )


def flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def my_rows(step: int, global_batch: int) -> slice:
    """This rank's contiguous share of global batch ``step``."""
    per_rank = global_batch // ctx.size
    start = step * global_batch + ctx.rank * per_rank
    return slice(start, start + per_rank)


def train(model, opt, steps, global_batch, first_step=0, accumulation=1):
    x, y = data()
    mse = torch.nn.MSELoss()
    for step in range(first_step, first_step + steps):
        for micro in range(accumulation):
            rows = my_rows(step * accumulation + micro, global_batch)
            mse(model(x[rows]), y[rows]).backward()
        opt.step()
        opt.zero_grad()


def reference(initial, make_opt, steps, batch):
    """One process, full batches of ``batch`` samples: what data parallelism must reproduce."""
    model = copy.deepcopy(initial)
    opt = make_opt(model.parameters())
    x, y = data()
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        opt.zero_grad()
        torch.nn.MSELoss()(model(x[rows]), y[rows]).backward()
        opt.step()
    return flat(model)


def worked_example() -> float:
    model = torch.nn.Linear(1, 1, bias=False).to(ctx.device)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, lr_scaling="none")
    x, y = (
        ([[1.0], [2.0]], [[2.0], [4.0]]) if ctx.rank == 0 else ([[3.0], [4.0]], [[16 / 3], [4.0]])
    )
    (
        (model(torch.tensor(x, device=ctx.device)) - torch.tensor(y, device=ctx.device)) ** 2
    ).sum().backward()
    local_grad = model.weight.grad.item()
    opt.step()
    return {"local_grad": local_grad, "w": model.weight.item()}


def equivalence(make_opt, accumulation=1):
    model = mlp()
    before_wrap = flat(model)
    opt = ht.wrap_optimizer(
        make_opt(model.parameters()), model, lr_scaling="none", accumulation_steps=accumulation
    )
    after_wrap = flat(model)
    initial = copy.deepcopy(model)
    train(model, opt, 20, GLOBAL_BATCH, accumulation=accumulation)
    return {
        "before_wrap": before_wrap,
        "after_wrap": after_wrap,
        "final": flat(model),
        "reference": reference(initial, make_opt, 20, GLOBAL_BATCH * accumulation),
    }


def fp16_steps(opt, model, steps=3):
    """Float32 training steps; per step each parameter's reduced gradient, and whether it kept the
    storage ``backward`` gave it."""
    x, y = (t.float() for t in data())
    grads, kept = [], []
    for step in range(steps):
        rows = my_rows(step, GLOBAL_BATCH)
        torch.nn.MSELoss()(model(x[rows]), y[rows]).backward()
        before = [p.grad.data_ptr() for p in model.parameters()]
        opt.step()
        grads.append([p.grad.flatten().tolist() for p in model.parameters()])
        kept.append([p.grad.data_ptr() == b for p, b in zip(model.parameters(), before)])
        opt.zero_grad()
    return {"grads": grads, "kept_storage": kept, "final": flat(model)}


def fp16():
    """hvdtrain's fp16 compressor against Horovod's ``Compression.fp16``, from the same weights on
    the same batches; then both around a reduce-scatter, whose output is smaller than its input."""
    ours = mlp().float()
    opt = ht.wrap_optimizer(
        torch.optim.SGD(ours.parameters(), lr=0.05), ours, lr_scaling="none", compression="fp16"
    )
    theirs = copy.deepcopy(ours)
    raw = hvd.DistributedOptimizer(
        torch.optim.SGD(theirs.parameters(), lr=0.05),
        named_parameters=[(f"raw.{n}", p) for n, p in theirs.named_parameters()],
        compression=hvd.Compression.fp16,
    )
    compressor = COMPRESSORS[Compression.FP16]

    def rank_grads():
        return torch.randn(10, generator=torch.Generator().manual_seed(ctx.rank)).float()

    flat_grads = rank_grads()
    results = []
    for name, how in (("hvdtrain", compressor), ("horovod", hvd.Compression.fp16)):
        compressed, context = how.compress(flat_grads)
        shard = how.decompress(hvd.reducescatter(compressed, name=f"fp16.rs.{name}"), context)
        results.append((shard, compressed.data_ptr()))
    input_unchanged = flat_grads.tolist() == rank_grads().tolist()
    again, context = compressor.compress(flat_grads)
    compressor.decompress(again, context)
    # Gloo's F16C float16 sum (scripts/patch_horovod.py): 8 lanes at a time, then a scalar tail
    halves = (torch.randn(37, generator=torch.Generator().manual_seed(ctx.rank)) * 100).half()
    summed = hvd.allreduce(halves, op=hvd.Sum, name="fp16.sum")
    return {
        "float16_sum": {
            "inputs": hvd.allgather(halves[None], name="fp16.inputs").float().tolist(),
            "summed": summed.float().tolist(),
        },
        "hvdtrain": fp16_steps(opt, ours),
        "horovod": fp16_steps(raw, theirs),
        "shard": {
            "hvdtrain": results[0][0].tolist(),
            "horovod": results[1][0].tolist(),
            "dtype": str(results[0][0].dtype),
            "input_unchanged": input_unchanged,
            "buffer_reused": again.data_ptr() == results[0][1],
        },
    }


def lr_schedule(scaling, warmup, with_scheduler):
    """Effective LR per step, read off the parameter update of a known gradient (d loss/dw = 1)."""
    w = torch.nn.Parameter(torch.zeros(1, device=ctx.device))
    holder = torch.nn.Module()
    holder.w = w
    opt = ht.wrap_optimizer(
        torch.optim.SGD([w], lr=0.1), holder, lr_scaling=scaling, warmup_steps=warmup
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s) if with_scheduler else None
    applied, reported = [], []
    for _ in range(6):
        reported.append(ht.current_lr(opt))
        before = w.item()
        w.sum().backward()
        opt.step()
        opt.zero_grad()
        applied.append(before - w.item())
        if sched:
            sched.step()
    return {"applied": applied, "reported": reported}


def uneven():
    x = torch.randn(1001, 5)
    dataset = TensorDataset(x, torch.randn(1001, 3))
    model = mlp()
    opt = ht.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.01), model)
    loader = ht.distributed_loader(dataset, batch_size=10)
    history = ht.fit(
        model, opt, torch.nn.MSELoss(), loader, epochs=2, progress=False, log_every=1000
    )
    return {
        "steps": history.global_step,
        "batches": len(loader),
        "samples": len(loader.sampler),
        "loss": history["loss"],
    }


def suite():
    sgd = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    adamw = lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)  # noqa: E731
    return {
        "worked": worked_example(),
        "sgd": equivalence(sgd),
        "adamw": equivalence(adamw),
        "adamw_accum2": equivalence(adamw, accumulation=2),
        "fp16": fp16(),
        "lr": {
            f"{s}-{w}-{sch}": lr_schedule(s, w, sch)
            for s in ("linear", "sqrt", "none")
            for w in (0, 4)
            for sch in (False, True)
        },
        "uneven": uneven(),
    }


def resumable(lr_scaling):
    model = mlp()
    opt = ht.wrap_optimizer(
        torch.optim.AdamW(model.parameters(), lr=0.01), model, lr_scaling=lr_scaling
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def train_with_scheduler(model, opt, sched, first, steps):
    for step in range(first, first + steps):
        train(model, opt, 1, GLOBAL_BATCH, first_step=step)
        sched.step()


def save():
    """Train k steps, checkpoint, then continue k more: the trajectory a resumed job must follow."""
    model, opt, sched = resumable("none")
    k = args.steps
    train_with_scheduler(model, opt, sched, 0, k)
    ht.save_checkpoint(
        args.ckpt, model, opt, sched, step=k, epoch=0, config={"global_batch": GLOBAL_BATCH}
    )
    saved = {"weights": flat(model), "lr": opt.param_groups[0]["lr"]}
    train_with_scheduler(model, opt, sched, k, k)
    return {"saved": saved, "continued": flat(model)}


def resume():
    model, opt, sched = resumable("none")
    try:
        meta = ht.load_checkpoint(args.ckpt, model, opt, sched)
    except ht.CheckpointError as err:
        return {"error": str(err)}
    loaded = {
        "weights": flat(model),
        "lr": opt.param_groups[0]["lr"],
        "step": meta.step,
        "saved_world_size": meta.world_size,
        "adam_steps": sorted({float(s["step"]) for s in opt.state.values()}),
    }
    train_with_scheduler(model, opt, sched, meta.step, args.steps)
    # Same checkpoint into an optimizer with linear scaling: its LR must follow this world size.
    model2, opt2, _ = resumable("linear")
    ht.load_checkpoint(args.ckpt, model2, opt2)
    # A checkpoint of another model: rank 0 fails to load it, and every rank must hear so.
    try:
        ht.load_checkpoint(args.ckpt, torch.nn.Linear(5, 3))
        mismatch = None
    except ht.CheckpointError as err:
        mismatch = str(err)
    return {
        "loaded": loaded,
        "continued": flat(model),
        "linear_lr": opt2.param_groups[0]["lr"],
        "mismatch": mismatch,
    }


report(
    args.out,
    ctx.rank,
    size=ctx.size,
    **{"suite": suite, "save": save, "resume": resume}[args.mode](),
)
