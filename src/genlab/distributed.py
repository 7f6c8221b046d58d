"""Data-parallel training of one model on several processes (``torchrun``), for :class:`genlab.engine.Run`
and the experiments that support it (SPEC §13, issue 20).

    torchrun --nproc-per-node 2 -m genlab run dcgan --batch-size 64       # one machine, 2 processes
    torchrun --nnodes 2 --node-rank R --nproc-per-node 4 \\
             --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m genlab run dcgan   # two machines

``torchrun`` starts the processes and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` in each; :func:`init` joins them into one process group, gloo on the CPU and NCCL
on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). What the processes agree on, and how:

- rank 0 alone opens, validates and writes the run directory; the others learn its outcome (the
  path, or the same refusal) from :func:`main_decides`, so a refusal never leaves a rank waiting;
- checkpoints are written by rank 0 and hold every rank's RNG state (:func:`all_gather_object`);
  on resume rank 0 reads the file and :func:`broadcast_object` hands it to the others, so the
  run directory need not be on a file system the other machines share;
- decisions taken from a clock or a signal (a checkpoint is due, Ctrl-C was pressed on one
  process) are combined with :func:`all_max` every step, so every rank stops or checkpoints at
  the same step.

A process that was not launched by ``torchrun`` (``WORLD_SIZE`` unset or 1) is a world of one:
every helper here is then a no-op, and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from genlab.errors import ConfigError, GenlabError

__all__ = ["World", "launched_world_size", "init", "shutdown", "refuse_unless_supported", "main_decides",
           "broadcast_object", "all_gather_object", "all_max", "all_sum", "all_mean", "split_batch", "shard",
           "token_weighted", "seed_rank", "AllReduceBatchNorm", "sync_batch_norm", "data_parallel", "unwrap"]

T = TypeVar("T")


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``; 1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes: ``rank`` in [0, ``size``), the
    collective ``backend`` ("gloo", "nccl"; None for a world of one)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes the run directory."""
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        """The initialised process group's world, or a world of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))
        return cls()


def refuse_unless_supported(experiment: str, supported: bool, supported_names: Callable[[], list[str]]) -> None:
    """Refuse a ``torchrun`` launch (``WORLD_SIZE`` > 1) of an experiment without data-parallel support;
    ``supported_names()`` lists those that have it (called only to refuse).

    Raises:
        ConfigError: naming the experiment, the world size and the experiments that do support it.
    """
    size = launched_world_size()
    if size > 1 and not supported:
        raise ConfigError(f"{experiment} does not train data-parallel, but torchrun started {size} processes; "
                          f"run it as `genlab run {experiment}` in one process (data-parallel experiments: "
                          f"{', '.join(supported_names())})")


def init(device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group if this process was launched by it; returns the device
    this rank trains on (``cuda:LOCAL_RANK`` for a CUDA ``device``, else ``device``).

    The backend is NCCL for CUDA and gloo for the CPU. Rendezvous comes from the environment
    ``torchrun`` sets (``MASTER_ADDR``/``MASTER_PORT``). A world of one initialises nothing.
    """
    if launched_world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; tensors travel through the CPU)."""
    if world.size == 1:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def _all_reduce(values: list[float], world: World, op: Any) -> list[float]:
    """``values`` reduced element-wise by ``op`` over the ranks, as float64, through a tensor on the
    device the backend reduces on (NCCL: this rank's GPU; gloo: the CPU)."""
    if world.size == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_max(values: list[float], world: World) -> list[float]:
    """Element-wise maximum of ``values`` over the ranks (e.g. 'stop now' flags), float64."""
    return _all_reduce(values, world, dist.ReduceOp.MAX)


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (e.g. counts, partial sums), float64; ``values``
    themselves in a world of one."""
    return _all_reduce(values, world, dist.ReduceOp.SUM)


def all_mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks (a new tensor; ``tensor`` itself on a world of one).
    With equal shards, the mean of per-rank batch means is the global batch mean."""
    if world.size == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world.size


def split_batch(batch_size: int, world_size: int, unit: str = "examples") -> int:
    """The per-rank batch of a global ``batch_size``: batch_size / ``world_size``. Called with
    :func:`launched_world_size` before :func:`init`, every rank refuses on its own and none is left
    waiting in the rendezvous.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of the world size (naming both).
    """
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} does not split over {world_size} processes: each process "
                          f"trains on batch / processes {unit}; use a multiple of {world_size}")
    return batch_size // world_size


def shard(items: list[T], world: World) -> list[T]:
    """This rank's share of a global batch ``items``: items r, r + W, r + 2W, ... (rank r of W),
    so that the W shares of a batch sorted by length have alike lengths. ``items`` in a world of one."""
    return items[world.rank::world.size] if world.size > 1 else items


def token_weighted(loss: torch.Tensor, count: int, world: World) -> tuple[torch.Tensor, int]:
    """A rank's loss, the mean over the ``count`` items (e.g. tokens) of its shard of a global
    batch, rescaled by W * count / N (N = Σ_ranks count), and N.

    DDP averages the ranks' gradients, so the gradient it applies is then
    (1/W) Σ_r W n_r / N ∇L_r = ∇ (Σ_r n_r L_r) / N: the gradient of the mean over all N items of
    the global batch, whatever the shards' sizes; and :func:`all_mean` of the rescaled losses is
    that mean's value. ``(loss, count)`` themselves in a world of one.
    """
    if world.size == 1:
        return loss, count
    total = int(all_sum([count], world)[0])
    return loss * (world.size * count / total), total


def seed_rank(seed: int, world: World) -> None:
    """Give each rank its own stream of torch's global RNG (dropout masks), seeded by
    ``seed * 1_000_003 + rank``; a no-op in a world of one, whose stream stays the one seeded by ``seed``."""
    if world.size > 1:
        torch.manual_seed(seed * 1_000_003 + world.rank)


def main_decides(fn: Callable[[], T], world: World) -> T:
    """Run ``fn`` on rank 0 and give every rank its result; a :class:`GenlabError` raised by ``fn``
    is raised on every rank with the same message (so no rank waits for one that has stopped).
    ``fn``'s result must be picklable."""
    if world.size == 1:
        return fn()
    result, error = None, None
    if world.is_main:
        try:
            result = fn()
        except GenlabError as err:
            error = err
    message, result = broadcast_object((str(error) if error else None, result), world)
    if error is not None:
        raise error
    if message is not None:
        raise GenlabError(message)
    return result


# ---------------------------------------------------------------------------------------
# Batch normalisation over the global batch
# ---------------------------------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x, whose gradient on each rank is Σ_ranks dL_r/dy (every rank's loss depends on y)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation (Ioffe and Szegedy 2015, Alg. 1) whose statistics are those of the
    *global* batch, split over the ranks: the CPU counterpart of ``nn.SyncBatchNorm``.

    ``nn.SyncBatchNorm`` refuses CPU tensors (its kernels, ``batch_norm_stats`` and friends, are
    GPU-only), so on gloo this layer computes, per channel c over the N·H·W values of every rank,

        mean_c = all_reduce(Σ x) / M,   var_c = all_reduce(Σ (x − mean_c)²) / M   (M = Σ_ranks N·H·W)
        y = (x − mean_c) / sqrt(var_c + eps) · weight_c + bias_c

    with an all-reduce whose backward all-reduces the gradient of the statistics: each rank's backward then holds the terms that every rank's loss
    contributes through the shared mean and variance, as SyncBatchNorm's does. Running statistics
    are updated as ``nn.BatchNorm`` does (unbiased variance, M / (M − 1)), identically on every
    rank. In eval mode, or in a world of one, it is ``F.batch_norm``. The state dict is
    BatchNorm's, so checkpoints move freely between one process and several.

    Input: (N, C) or (N, C, *) float; output: the same shape.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        world = World.current()
        if not self.training or world.size == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))  # every axis but the channel's
        total = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64)
        dist.all_reduce(total)
        total = total.item()  # M
        xf = x.float()  # statistics in float32 whatever the autocast dtype
        mean = _AllReduceSum.apply(xf.sum(dims)) / total  # (C,)
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / total  # (C,), biased
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / max(total - 1.0, 1.0), momentum)
        return y.to(x.dtype)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer computing global-batch statistics: ``nn.SyncBatchNorm``
    on CUDA, :class:`AllReduceBatchNorm` on the CPU. Parameters and buffers are kept (moved, not
    copied). Returns ``module`` unchanged in a world of one."""
    if World.current().size == 1:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, AllReduceBatchNorm):
            new = AllReduceBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            new.load_state_dict(m.state_dict())
            new.train(m.training)
            return new.to(next(m.buffers(), torch.empty(0)).device)
        for name, child in m.named_children():
            setattr(m, name, convert(child))
        return m

    return convert(module)


def data_parallel(module: nn.Module, device: torch.device, **kwargs: Any) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` (gradients averaged over the ranks at each
    backward; rank 0's parameters broadcast at construction), or ``module`` itself in a world of one."""
    if World.current().size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``module`` itself)."""
    return getattr(module, "module", module)
