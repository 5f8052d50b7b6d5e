"""Several processes training one model: torchrun's process group, and the few collectives the engine needs.

`torchrun --nproc-per-node N -m imgcls train ...` (or `imgcls train --nproc N`) starts N processes that each train on
their shard of every global batch, with DistributedDataParallel averaging the gradients. Rank 0 alone writes the run
folder and prints. Without torchrun the group is a group of one, and every function here returns at once.
"""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from imgcls.errors import ImgclsError

# A rank that stops answering (killed, hung) fails the others' next collective after this long; torchrun's agent
# usually ends them sooner, as soon as it sees a worker die.
TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Group:
    """The group torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; a group of one without them."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return Group(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ImgclsError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: start imgcls with torchrun or without them") from None


def setup(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return it with this process's device (its own GPU)."""
    group = from_env()
    if not group.active:
        return group, device
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ImgclsError(f"training on several processes needs CUDA or the CPU, not {device.type}: pass --device cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return group, device


_errors = None  # the real stderr of a quieted process


def quiet_unless_main(group: Group) -> None:
    """Ranks other than 0 print nothing but their errors (`errors()`): no progress, no duplicate lines."""
    global _errors
    if not group.main and _errors is None:
        _errors = sys.stderr
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def errors():
    """Where an error goes: stderr, also in a quieted process."""
    return _errors or sys.stderr


def sum_(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """The element-wise sum over ranks, in place."""
    if group.active:
        dist.all_reduce(tensor, dist.ReduceOp.SUM)
    return tensor


def any_(flag: bool, group: Group, device: torch.device) -> bool:
    """True on every rank when it is true on any (a stop asked for by one process stops all at the same step)."""
    if not group.active:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(value, group: Group):
    """Rank 0's value, on every rank (picklable objects: a run folder's path)."""
    if not group.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(group: Group) -> None:
    if group.active:
        dist.barrier()


def leave(group: Group) -> None:
    """The end of a run on several processes: every rank waits for the others (rank 0 writes the report after the
    rest are done), then the group is taken down. A process that exits while a peer still talks to it, its gloo
    threads alive, aborts ("terminate called without an active exception") and takes the run down with it."""
    if group.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, group: Group) -> slice:
    """This rank's contiguous part of n items (evaluation): equal parts, the first ranks one more when n does not divide."""
    size, extra = divmod(n, group.world)
    start = group.rank * size + min(group.rank, extra)
    return slice(start, start + size + (group.rank < extra))


def gather_rows(part: torch.Tensor, n: int, group: Group) -> torch.Tensor:
    """The rows every rank computed for its shard(n), in order, on every rank."""
    if not group.active:
        return part
    lengths = [len(range(n)[shard(n, Group(r, group.world))]) for r in range(group.world)]
    padded = part.new_zeros((max(lengths), *part.shape[1:]))
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(group.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:length] for p, length in zip(parts, lengths)])
