"""Mini-batches drawn by index from device-resident tensors, one reshuffle per epoch.

Cheaper than a DataLoader for data that fits on the device: no worker processes, no collation,
no host-to-device copy per step. The generator lives on the CPU so that the draw order is the
same on every device, and its state is part of the checkpoint.
"""

from __future__ import annotations

import torch

from adalfl.data.base import Batch, Split


class BatchSampler:
    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        if len(split) == 0:
            raise ValueError("cannot sample batches from an empty split")
        self.split = split
        # A batch larger than the split is the whole split: a fixed shape keeps steps comparable.
        self.batch_size = min(batch_size, len(split))
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def _reshuffle(self) -> None:
        perm = torch.randperm(len(self.split), generator=self.generator)
        self._order = perm.to(self.split.y.device)
        self._pos = 0

    def next_indices(self) -> torch.Tensor:
        # The tail that does not fill a batch is dropped, so every batch has the same size.
        if self._pos + self.batch_size > self._order.numel():
            self._reshuffle()
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def next(self) -> Batch:
        idx = self.next_indices()
        return Batch(self.split.x[idx], self.split.y[idx])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self._order.cpu(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order = state["order"].to(self.split.y.device)
        self._pos = int(state["pos"])
