"""`DevicePrefetcher`: the next batch's host→device copy runs while the current training step does.

On CUDA it reads one item ahead: while the caller's step runs on the current stream, the next item's tensors are
copied on a side stream (`non_blocking`, so they overlap only from pinned memory: `DataLoader(pin_memory=True)`;
pageable tensors are copied correctly, without overlap). The wrapped iterator is advanced inside the side stream, so
GPU work it does (e.g. `JpegBatchDecoder` on CUDA) runs there and overlaps the step too. `next()` makes the current
stream wait for the side stream, and marks every device tensor of the item as used by the current stream
(`record_stream`), so the caching allocator does not give its memory to a later copy while the step may still read it.

Items may be tensors or dicts, lists and tuples of them (a collated batch, a `(batch, position)` pair): tensors are
moved wherever they sit, everything else (ints, strings, skip records) passes as it is. Items come out in order, each
with what the iterator paired it with, so bookkeeping carried in the item (a position) stays with its batch. An
exception raised by the iterator while reading ahead is raised by the `next()` that would have returned that item.

On any other device (CPU) it is a plain pass-through: nothing is moved or read ahead, `next()` returns the iterator's
own objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Iterable, TypeVar

import torch

T = TypeVar("T")
_NOTHING, _END = object(), object()


@dataclass
class _Raised:
    error: Exception


class DevicePrefetcher(Generic[T]):
    """Iterator over `items` with their tensors on `device`, each copied while the previous item is in use."""

    def __init__(self, items: Iterable[T], device: torch.device | str) -> None:
        self.items = iter(items)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._ahead: Any = _NOTHING  # (item, its device tensors), _END or _Raised: read and on its way (CUDA)

    def __iter__(self) -> DevicePrefetcher[T]:
        return self

    def __next__(self) -> T:
        if self.stream is None:
            return next(self.items)
        ahead = self._load() if self._ahead is _NOTHING else self._ahead
        self._ahead = _NOTHING
        if ahead is _END:
            self._ahead = _END
            raise StopIteration
        if isinstance(ahead, _Raised):
            raise ahead.error
        item, tensors = ahead
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)  # the copies (and decoding) finish before the step reads them
        for tensor in tensors:
            tensor.record_stream(current)  # their memory is reused after the step's use, not after the copy
        self._ahead = self._load()  # the next item's copy overlaps the caller's step
        return item

    def _load(self) -> Any:
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            try:
                tensors: list[torch.Tensor] = []
                return _to_device(next(self.items), self.device, tensors), tensors
            except StopIteration:
                return _END
            except Exception as error:  # raised by the next() that would have returned this item
                return _Raised(error)


def _to_device(item: Any, device: torch.device, moved: list[torch.Tensor]) -> Any:
    """`item` with its tensors on `device` (non-blocking copies), each appended to `moved`."""
    if isinstance(item, torch.Tensor):
        moved.append(item.to(device, non_blocking=True))
        return moved[-1]
    if isinstance(item, dict):
        return {key: _to_device(value, device, moved) for key, value in item.items()}
    if type(item) in (list, tuple):
        return type(item)(_to_device(value, device, moved) for value in item)
    return item
