"""Worker for tests/test_zero_torch.py: optimizer-state sharding against the unsharded optimizer."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import copy  # noqa: E402

import torch  # noqa: E402

import hvdtrain.torch as ht  # noqa: E402
from hvdtrain.torch import zero  # noqa: E402
from tests.workers.common import parse_args, report  # noqa: E402

torch.set_default_dtype(torch.float64)
args = parse_args(mode=str, ckpt=str, out_ckpt=str, steps=int)
ctx = ht.init(seed=100)  # seed + rank: every rank starts from different random weights
GLOBAL_BATCH = 12  # divisible by 1, 2 and 3 workers
MAX_GRAD_NORM = 0.3  # below the early gradient norms: clipping really acts
OPTIMIZERS = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=0.01, weight_decay=0.1),
}


def mlp() -> torch.nn.Module:
    """83 parameters (weights 70, biases 13): divisible by neither 2 nor 3 workers."""
    return torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def param_groups(model):
    """Two groups, as LLM recipes have: weights with weight decay, biases without."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return [{"params": weights}, {"params": biases, "weight_decay": 0.0}]


def data(n: int = 2000):
    gen = torch.Generator().manual_seed(7)  # identical on every rank
    return torch.randn(n, 4, generator=gen), torch.randn(n, 3, generator=gen)


def flat(model) -> list[float]:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def train(model, opt, sched, first, steps, accumulation=1):
    """Steps ``first``..: each global batch of GLOBAL_BATCH * accumulation
    samples split over the ranks."""
    x, y = data()
    per_rank = GLOBAL_BATCH // ctx.size
    for step in range(first, first + steps):
        for micro in range(accumulation):
            start = (step * accumulation + micro) * GLOBAL_BATCH + ctx.rank * per_rank
            torch.nn.functional.mse_loss(
                model(x[start : start + per_rank]), y[start : start + per_rank]
            ).backward()
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()


def wrapped(
    model,
    name,
    shard,
    accumulation=1,
    compression="none",
    lr_scaling="none",
    warmup_steps=0,
    max_grad_norm=MAX_GRAD_NORM,
    shard_gradients=False,
):
    opt = ht.wrap_optimizer(
        OPTIMIZERS[name](param_groups(model)),
        model,
        lr_scaling=lr_scaling,
        warmup_steps=warmup_steps,
        accumulation_steps=accumulation,
        max_grad_norm=max_grad_norm,
        compression=compression,
        shard_optimizer_state=shard,
        shard_gradients=shard_gradients,
    )
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)


def state_numels(opt) -> dict:
    """Per state key, the elements this rank holds, summed over its state entries."""
    found: dict[str, int] = {}
    for state in opt.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                found[key] = found.get(key, 0) + value.numel()
    return found


def equivalence(name, accumulation, compression="none", stage=1):
    """20 steps sharded (ZeRO ``stage`` 1 or 2) and unsharded from the same start, with linear LR
    scaling, warmup, a scheduler, accumulation and clipping."""
    model = mlp()
    runs = {}
    for shard in (False, True):
        copy_ = copy.deepcopy(model)
        opt, sched = wrapped(
            copy_,
            name,
            shard,
            accumulation,
            compression,
            lr_scaling="linear",
            warmup_steps=3,
            shard_gradients=shard and stage == 2,
        )
        train(copy_, opt, sched, 0, 20, accumulation)
        runs[shard] = {
            "final": flat(copy_),
            "state": state_numels(opt),
            "state_bytes": zero.state_bytes(opt),
            "lr": opt.param_groups[0]["lr"],
            "sharded": zero.is_sharded(opt),
            "is_instance": isinstance(
                opt, torch.optim.AdamW if name == "adamw" else torch.optim.SGD
            ),
            "state_entries": len(opt.state),
            # after zero_grad: stage 1 keeps zeroed views, stage 2 and torch None
            "grads_kept": [p.grad is not None for p in copy_.parameters()],
        }
    unclipped = copy.deepcopy(model)  # the same without clipping: proves clipping acted
    opt, sched = wrapped(
        unclipped,
        name,
        True,
        accumulation,
        compression,
        "linear",
        3,
        max_grad_norm=None,
        shard_gradients=stage == 2,
    )
    train(unclipped, opt, sched, 0, 20, accumulation)
    return {"unsharded": runs[False], "sharded": runs[True], "unclipped": flat(unclipped)}


def suite():
    return {
        f"{name}-{accumulation}": equivalence(name, accumulation)
        for name in OPTIMIZERS
        for accumulation in (1, 2)
    } | {
        "adamw-fp16": equivalence("adamw", 2, "fp16"),
        "sgd-1-stage2": equivalence("sgd", 1, stage=2),
        "adamw-2-stage2": equivalence("adamw", 2, stage=2),
        "adamw-fp16-stage2": equivalence("adamw", 2, "fp16", stage=2),
        "overflow": overflow(),
        "changed": changed_after_backward(),
        "rewrapped": rewrapped(),
        "bf16-stage1": mixed(stage=1),
        "bf16-stage2": mixed(stage=2),
    }


def overflow():
    """AMP: an inf in one rank's gradient lands in one rank's shard;
    every rank must skip the step."""
    model = mlp()
    opt, _ = wrapped(model, "adamw", shard=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = data()
    before = flat(model)
    scales, weights = [], []
    for step in range(2):
        loss = torch.nn.functional.mse_loss(
            model(x[step * 6 : (step + 1) * 6]), y[step * 6 : (step + 1) * 6]
        )
        # element 0: in rank 0's shard after the reduce-scatter, which starts in backward
        inject = model[0].weight.register_hook(_inf_at_0) if step == 0 else None
        scaler.scale(loss).backward()
        if inject is not None:
            inject.remove()
        opt.synchronize()
        scaler.unscale_(opt)
        zero.agree_on_overflow(opt, scaler)
        with opt.skip_synchronize():
            scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        scales.append(scaler.get_scale())
        weights.append(flat(model))
    return {"before": before, "weights": weights, "scales": scales}


def _inf_at_0(grad):
    """A tensor hook: on the last rank, an overflow in element 0 of this gradient."""
    if ctx.rank != ctx.size - 1:
        return grad
    grad = grad.clone()
    grad[0, 0] = float("inf")
    return grad


def changed_after_backward():
    """Every rank changes a gradient after backward, when its reduce-scatter has started: the
    step refuses in one line, and the optimizer trains on afterwards."""
    model = mlp()
    opt, _ = wrapped(model, "adamw", shard=True)
    x, y = data()
    torch.nn.functional.mse_loss(model(x[:6]), y[:6]).backward()
    model[0].weight.grad.mul_(2.0)
    try:
        opt.step()
        message = None
    except zero.GradientsChangedError as error:
        message = str(error)
    opt.zero_grad()
    before = flat(model)
    torch.nn.functional.mse_loss(model(x[:6]), y[:6]).backward()
    opt.step()
    return {"message": message, "trained_after": flat(model) != before}


def rewrapped():
    """A model wrapped again (a new optimizer after 2 steps) trains as a fresh copy of it does:
    the first optimizer's backward hooks are gone."""
    model = mlp()
    opt, sched = wrapped(model, "adamw", shard=True)
    train(model, opt, sched, 0, 2)
    fresh, before = copy.deepcopy(model), flat(model)
    for each in (model, fresh):
        opt, sched = wrapped(each, "sgd", shard=True)
        train(each, opt, sched, 2, 2)
    return {"same": flat(model) == flat(fresh), "trained": flat(model) != before}


def mixed(stage, steps=10):
    """bf16 parameters and gradients with fp32 master shards and AdamW state (ZeRO's usual
    setting), against the same done by hand unsharded: an fp32 master model takes the bf16
    model's gradients, Horovod's unsharded optimizer averages and steps them, and the bf16 model
    takes the result."""
    model = mlp().to(torch.bfloat16)
    opt, _ = wrapped(model, "adamw", shard=True, max_grad_norm=None, shard_gradients=stage == 2)
    reference = copy.deepcopy(model)  # after the wrap: rank 0's weights, as plain tensors
    master = copy.deepcopy(model).float()
    master_opt, _ = wrapped(master, "adamw", shard=False, max_grad_norm=None)
    before = flat(model)
    x, y = (t.to(torch.bfloat16) for t in data())
    per_rank = GLOBAL_BATCH // ctx.size
    for step in range(steps):
        start = step * GLOBAL_BATCH + ctx.rank * per_rank
        batch = x[start : start + per_rank], y[start : start + per_rank]
        torch.nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
        opt.step()
        opt.zero_grad()
        torch.nn.functional.mse_loss(reference(batch[0]), batch[1]).backward()
        for fp32, bf16 in zip(master.parameters(), reference.parameters()):
            fp32.grad, bf16.grad = bf16.grad.float(), None
        master_opt.step()
        master_opt.zero_grad()
        with torch.no_grad():
            for fp32, bf16 in zip(master.parameters(), reference.parameters()):
                bf16.copy_(fp32)
    # a checkpoint's round trip keeps the fp32 masters, not the bf16 weights rounded
    saved, resumed = opt.state_dict(), mlp().to(torch.bfloat16)
    resumed_opt, _ = wrapped(resumed, "adamw", shard=True, shard_gradients=stage == 2)
    resumed.load_state_dict(model.state_dict())
    resumed_opt.load_state_dict(saved)
    return {
        "masters_restored": [b.shard.tolist() for b in resumed_opt._zero.buckets]
        == [b.shard.tolist() for b in opt._zero.buckets],
        "master_differs_from_weights": any(
            not torch.equal(b.shard, b.own.float()) for b in opt._zero.buckets
        ),
        "saved_keys": sorted({k for state in saved["state"].values() for k in state}),
        "weights": flat(model),
        "reference": flat(reference),
        "trained": flat(model) != before,
        "dtypes": sorted(
            {str(v.dtype) for s in opt.state.values() for v in s.values() if v.dim() > 0}
        ),
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    }


def save():
    """Sharded: k steps, checkpoint, then 2k more uninterrupted (the reference trajectory)."""
    model = mlp()
    opt, sched = wrapped(model, "adamw", shard=True)
    k = args.steps
    train(model, opt, sched, 0, k)
    ht.save_checkpoint(args.ckpt, model, opt, sched, step=k, epoch=0)
    saved = {"weights": flat(model), "state": state_numels(opt)}
    train(model, opt, sched, k, k)
    at_2k = flat(model)
    train(model, opt, sched, 2 * k, k)
    return {"saved": saved, "at_2k": at_2k, "at_3k": flat(model)}


def resume():
    """Load the newest checkpoint in --ckpt (sharded when --mode resume-sharded), train k steps,
    optionally save to --out-ckpt."""
    model = mlp()
    opt, sched = wrapped(model, "adamw", shard=args.mode == "resume-sharded")
    meta = ht.load_checkpoint(args.ckpt, model, opt, sched)
    loaded = {
        "step": meta.step,
        "saved_world_size": meta.world_size,
        "weights": flat(model),
        "adam_steps": sorted({float(s["step"]) for s in opt.state.values()}),
        "state": state_numels(opt),
        "lr": opt.param_groups[0]["lr"],
    }
    train(model, opt, sched, meta.step, args.steps)
    if args.out_ckpt:
        ht.save_checkpoint(args.out_ckpt, model, opt, sched, step=meta.step + args.steps, epoch=0)
    return {"loaded": loaded, "continued": flat(model), "sharded": zero.is_sharded(opt)}


modes = {"suite": suite, "save": save, "resume": resume, "resume-sharded": resume}
report(args.out, ctx.rank, size=ctx.size, **modes[args.mode]())
