"""`ResumableSampler`: a (seed, epoch)-deterministic, resumable, DDP-aware sampler (see its docstring)."""
from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler


def _seed_for(seed: int, epoch: int) -> int:
    # Hash (seed, epoch) instead of seed + epoch: (0, 1) and (1, 0) must not share an order.
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class ResumableSampler(Sampler):
    """Deterministic, resumable, optionally distributed sampler.

    Order: a permutation from (seed, epoch) when `shuffle`, else 0..n-1. With num_replicas > 1
    the order is padded by wrapping to a multiple of num_replicas (or cut, with drop_last) and
    rank r takes positions r, r + R, ... — DistributedSampler's layout — so ranks see disjoint
    samples apart from the wrapped padding and all ranks yield the same count.

    Resume: `consumed` counts this rank's samples of the current epoch handed out so far;
    `skip(k)` (or `load_state_dict`) makes the next iteration of the current epoch start at
    position k. `set_epoch(e)` with a new epoch clears both. `__len__` is always the full epoch,
    so a resumed loader still reports the epoch's full batch count (Lightning's progress counters
    continue from the checkpoint and reach exactly that count).
    """

    def __init__(self, data_source: Sized | int, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False, with_epoch: bool = False):
        self.n = data_source if isinstance(data_source, int) else len(data_source)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.shuffle, self.seed, self.num_replicas, self.rank = shuffle, seed, num_replicas, rank
        self.drop_last, self.with_epoch = drop_last, with_epoch
        self.epoch, self.consumed, self._skip = 0, 0, 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.num_replicas
        return math.ceil(self.n / self.num_replicas)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full index list for `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed_for(self.seed, epoch))
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = len(self) * self.num_replicas
        if total > self.n > 0:  # pad by wrapping around, as DistributedSampler does
            order = order.repeat(math.ceil(total / self.n))
        return order[:total][self.rank::self.num_replicas].tolist()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a different epoch than the current one starts from position 0."""
        if epoch != self.epoch:
            self.epoch, self.consumed, self._skip = epoch, 0, 0

    def skip(self, n: int) -> None:
        """Make the next iteration of the current epoch start after its first `n` samples."""
        if n < 0:
            raise ValueError(f"cannot skip a negative number of samples ({n})")
        self._skip = self.consumed = min(n, len(self))

    def __iter__(self) -> Iterator[Any]:
        indices = self.epoch_indices()
        start = min(self._skip, len(indices))
        self._skip, self.consumed = 0, start  # the skip applies to this iteration only
        return self._iterate(indices, start)

    def _iterate(self, indices: list[int], start: int) -> Iterator[Any]:
        for i in indices[start:]:
            self.consumed += 1
            yield (self.epoch, i) if self.with_epoch else i

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "n": self.n, "seed": self.seed,
                "shuffle": self.shuffle, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at (epoch, consumed). A different dataset size/seed/shuffle warns and restarts the epoch."""
        self.epoch = int(state["epoch"])
        consumed = int(state["consumed"])
        same = (state.get("n", self.n), state.get("seed", self.seed), state.get("shuffle", self.shuffle)) == \
               (self.n, self.seed, self.shuffle)
        if not same:
            warnings.warn(f"sampler state was saved for n={state.get('n')}, seed={state.get('seed')}, "
                          f"shuffle={state.get('shuffle')} but this sampler has n={self.n}, seed={self.seed}, "
                          f"shuffle={self.shuffle}: the data changed, so epoch {self.epoch} restarts from its "
                          f"first sample instead of resuming mid-epoch", UserWarning, stacklevel=2)
            consumed = 0
        old_r = int(state.get("num_replicas", self.num_replicas))
        if old_r != self.num_replicas:
            # Same global position in the shared order, re-split over the new number of ranks:
            # never skips an unseen sample, may repeat fewer than num_replicas of them.
            consumed = consumed * old_r // self.num_replicas
        self.consumed = self._skip = min(consumed, len(self))
