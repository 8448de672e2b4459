"""The variant cache: every (layer, option) weight, compressed once, kept where it is fastest to use.

Variants live on the compute device while the device part of the cache stays under a byte cap;
past it they are kept in host memory (pinned on CUDA). A host variant is applied by copying it into
a per-layer device *slot* with an asynchronous (``non_blocking``) copy on a side stream; the
layer's forward pre-hook makes the compute stream wait for that copy only when the layer is about
to run, so the copies of later layers overlap the computation of earlier ones.

On the CPU the two tiers are the same memory; the host tier (used only when a cap is set) then
copies synchronously, which exercises the same code path in tests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import torch
from torch import nn

Key = tuple[str, Hashable]  # (layer name, option)


class VariantCache:
    def __init__(self, device: torch.device, device_cap_bytes: int | None = None) -> None:
        """``device_cap_bytes``: the most bytes of variants kept on ``device`` (None: no limit)."""
        self.device = device
        self.device_cap_bytes = device_cap_bytes
        self.on_device: dict[Key, torch.Tensor] = {}
        self.on_host: dict[Key, torch.Tensor] = {}
        self.slots: dict[str, torch.Tensor] = {}
        self._device_bytes = 0  # of on_device
        self._cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self._cuda else None
        self._pending: dict[str, torch.cuda.Event] = {}
        self._hooked: set[str] = set()

    # -- contents ---------------------------------------------------------------------------------
    def __contains__(self, key: Key) -> bool:
        return key in self.on_device or key in self.on_host

    def __len__(self) -> int:
        return len(self.on_device) + len(self.on_host)

    def __iter__(self) -> Iterator[Key]:
        return iter([*self.on_device, *self.on_host])

    def bytes(self) -> dict[str, int]:
        """Bytes held on the device (variants and slots) and in host memory."""
        def size(ts) -> int:
            return sum(t.numel() * t.element_size() for t in ts)
        return {"device": self._device_bytes + size(self.slots.values()),
                "host": size(self.on_host.values())}

    def put(self, key: Key, weight: torch.Tensor) -> None:
        """Keep ``weight`` (on the device) for ``key``: on the device while under the cap, else host."""
        nbytes = weight.numel() * weight.element_size()
        if self.device_cap_bytes is None or self._device_bytes + nbytes <= self.device_cap_bytes:
            self.on_device[key] = weight
            self._device_bytes += nbytes
            return
        host = torch.empty(weight.shape, dtype=weight.dtype, device="cpu", pin_memory=self._cuda)
        host.copy_(weight)
        self.on_host[key] = host

    def get(self, key: Key) -> torch.Tensor:
        """The stored tensor of ``key`` (on the device or the host)."""
        return self.on_device[key] if key in self.on_device else self.on_host[key]

    # -- applying ---------------------------------------------------------------------------------
    def fetch(self, key: Key, module: nn.Module) -> torch.Tensor:
        """A device tensor holding ``key``'s weight, ready when ``module`` runs."""
        if key in self.on_device:
            return self.on_device[key]
        name, host = key[0], self.on_host[key]
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = torch.empty(host.shape, dtype=host.dtype, device=self.device)
        if self._copy_stream is None:
            slot.copy_(host)
            return slot
        # the copy must not overwrite the slot while work queued before it may still read it
        self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._copy_stream):
            slot.copy_(host, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        self._pending[name] = event
        if name not in self._hooked:
            module.register_forward_pre_hook(self._waiter(name))
            self._hooked.add(name)
        return slot

    def _waiter(self, name: str):
        def wait_for_copy(_module: nn.Module, _args) -> None:
            event = self._pending.pop(name, None)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
        return wait_for_copy
