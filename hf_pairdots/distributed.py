"""Splitting the training-side scoring across processes.

Under ``accelerate launch`` / ``torchrun`` every rank holds the same model and the same training
set. The explanation is computed on every rank on the *unwrapped* module (never through DDP
hooks, whose gradient synchronisation would mix ranks); s_test is solved identically on every rank and then broadcast from rank 0 so
all ranks score with bit-identical vectors. Only the streamed pass over the training set
(:func:`~hf_pairdots.influence.train_influence`) is split: each rank scores a shard of the
prepared batches, and the scores travel back *with their example ids* and are reassembled by id
(no entry duplicated by padding, each id exactly once, ordered by id).

Every helper is the identity when ``torch.distributed`` is not initialised or has one process.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .influence import train_influence


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that writes files."""
    return rank_and_world_size()[0] == 0


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Round-robin shard of ``items`` for ``rank``: no padding, shards differ in size by at most one.

    Round robin over length-sorted batches also balances the work (every rank gets short and long).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(items)[rank::world_size]


def reassemble(pieces: Sequence[tuple[Tensor, Tensor]], size: int) -> Tensor:
    """Scores ``(Q, size)`` ordered by id from per-rank pieces ``(ids (m,), scores (Q, m))``.

    Duplicate ids (e.g. from a sampler that pads the last uneven shard) are removed by id, the
    first piece's copy winning; a missing or out-of-range id raises ``ValueError``.
    """
    ids = torch.cat([torch.as_tensor(i, dtype=torch.long).reshape(-1) for i, _ in pieces])
    scores = torch.cat([s.reshape(s.shape[0], -1) for _, s in pieces], dim=1)
    if len(ids) and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"ids outside 0..{size - 1}")
    seen = torch.zeros(size, dtype=torch.bool)
    keep = torch.zeros(len(ids), dtype=torch.bool)
    for position, i in enumerate(ids.tolist()):  # first occurrence of each id
        if not seen[i]:
            seen[i] = True
            keep[position] = True
    if not seen.all():
        missing = (~seen).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{int((~seen).sum())} of {size} ids missing after the gather, e.g. {missing}")
    out = torch.empty(scores.shape[0], size, dtype=scores.dtype)
    out[:, ids[keep]] = scores[:, keep]
    return out


def gather_by_id(ids: Tensor, scores: Tensor, size: int) -> Tensor:
    """All-gather this rank's ``(ids, scores)`` and :func:`reassemble` them; identity-like in one process."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()
    scores = scores.detach().cpu()
    if not is_distributed():
        return reassemble([(ids, scores)], size)
    pieces = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(pieces, (ids, scores))
    return reassemble(pieces, size)


def broadcast_tensor(tensor: Tensor, src: int = 0) -> Tensor:
    """Rank ``src``'s value of ``tensor`` (same shape on every rank); identity in one process."""
    if not is_distributed():
        return tensor
    [value] = broadcast_object(tensor.detach().cpu(), src)
    return value.to(tensor.device)


def broadcast_object(obj, src: int = 0) -> list:
    """``[rank src's obj]`` on every rank (a picklable object); ``[obj]`` in one process."""
    box = [obj]
    if is_distributed():
        torch.distributed.broadcast_object_list(box, src=src)
    return box


def sharded_train_influence(objective, data, s_test: Tensor) -> Tensor:
    """:func:`~hf_pairdots.influence.train_influence` split over the ranks and gathered by id.

    Each rank scores its round-robin share of ``data.batches``
    (:meth:`~hf_pairdots.loss.PreparedData.shard`) with the same ``s_test``; the result,
    ``(Q, n)`` in the order of the training texts on the CPU, is the same on every rank and
    equals the one-process result. In one process it is exactly ``train_influence``.
    """
    if not is_distributed():
        return train_influence(objective, data, s_test)
    local, ids = data.shard(*rank_and_world_size())
    scores = train_influence(objective, local, s_test) if local.batches else torch.empty(s_test.shape[0], 0,
                                                                                          dtype=s_test.dtype)
    return gather_by_id(ids, scores, data.size)
