"""One process, or several under torchrun: the device, the process group (NCCL on GPUs, gloo
on CPUs), DDP, and a differentiable all-gather for in-batch negatives across processes."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    device: torch.device
    own_group: bool  # whether this module initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Device and process group: under torchrun (WORLD_SIZE > 1) one process per GPU
    (``cuda:LOCAL_RANK``, NCCL) or CPU processes (gloo)."""
    from xdretrieve.encoder import pick_device

    name = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, torch.device(name), False)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name.startswith("cuda"):
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)  # before the process group: NCCL binds this device
    else:
        dev = torch.device(name)
    own = not dist.is_initialized()
    if own:
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev, own)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each process the gradient of every
    process's loss with respect to its rows (all-reduce, then its slice): public collectives
    only, the same on gloo and NCCL."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # (world * rows, dim): summed over the processes' losses
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every process's ``x`` (same shape everywhere), differentiably: the gradient
    of the other processes' losses flows back to this process's rows."""
    return x if world_size == 1 else _GatherWithGrad.apply(x)


def how_many_say(flag: bool, ctx: Dist) -> int:
    """How many processes have ``flag`` set (on every process)."""
    if ctx.world_size == 1:
        return int(flag)
    t = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(t)
    return round(t.item())


def rank0_says(flag: bool, ctx: Dist) -> bool:
    """Rank 0's ``flag`` on every process (stopping must be decided together)."""
    if ctx.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def wrap_ddp(model, ctx: Dist):
    """The model itself in one process; wrapped in DistributedDataParallel (gradients averaged
    over the processes) in several. Parameters must all receive gradients (see
    ``full._freeze_unused``): unused-parameter detection does not allow the two forwards (queries,
    documents) per backward."""
    if ctx.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    # buffers (position ids) are constants: no broadcast before each of the two forwards
    sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    kwargs = {sync: False}
    if ctx.device.type == "cuda":
        kwargs.update(device_ids=[ctx.device.index], output_device=ctx.device.index)
    return DistributedDataParallel(model, find_unused_parameters=False, **kwargs)
