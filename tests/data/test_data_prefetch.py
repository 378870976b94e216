"""DevicePrefetcher: a pass-through on CPU; on CUDA the same items, in order, with their tensors on the device."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest
import torch
from torch.utils.data import DataLoader

from vla_dino.data import DevicePrefetcher, FrameDataset, collate_frames, discover_sources, examples, prefetch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> FrameDataset:
    root = tmp_path_factory.mktemp("prefetch_logs")
    examples.write_image_folder(root / "ep0" / "front", 7, 0)
    broken = examples.write_image_folder(root / "ep1" / "front", 3, 1, suffix=".jpg")
    broken[1].write_bytes(b"\xff\xd8 garbage")  # a skip record travels with its batch
    return FrameDataset(discover_sources([root]), frame_size=16, neighbor_offset=1)


def batch_stream(dataset: FrameDataset, pin: bool) -> Iterator[tuple[dict[str, Any], tuple[int, int]]]:
    """What vla_dino.pretrain.train.batch_stream yields: each batch with the (epoch, batch) position after it."""
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_frames, pin_memory=pin)
    for epoch in range(2):
        for index, batch in enumerate(loader):
            yield batch, ((epoch, index + 1) if index + 1 < len(loader) else (epoch + 1, 0))


def test_on_cpu_it_passes_the_items_through_untouched(dataset: FrameDataset) -> None:
    expected = list(batch_stream(dataset, pin=False))
    stream = iter(expected)
    prefetcher = DevicePrefetcher(stream, "cpu")
    got = list(prefetcher)
    assert len(got) == len(expected) == 6
    assert all(have is want for have, want in zip(got, expected))  # the same objects, in order: nothing moved
    assert [position for _, position in got] == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert any(batch["skipped"] for batch, _ in got)  # skip records stay with their batch
    with pytest.raises(StopIteration):
        next(prefetcher)


def test_reading_ahead_keeps_order_positions_and_errors_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch's bookkeeping on CPU: stream calls are faked, "copies" stay on the CPU."""
    events: list[str] = []

    class Stream:
        def __init__(self, *args: Any) -> None:
            pass

        def wait_stream(self, other: Any) -> None:
            events.append("wait")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: events.append("record"))
    to_device = prefetch._to_device
    monkeypatch.setattr(prefetch, "_to_device", lambda item, device, moved: to_device(item, torch.device("cpu"), moved))

    def items() -> Iterator[tuple[dict[str, Any], tuple[int, int]]]:
        for i in range(3):
            events.append(f"read {i}")
            yield {"frame": torch.full((2,), i), "skipped": [("token", "file", "reason")]}, (0, i + 1)
        raise ValueError("reader failed")

    prefetcher = DevicePrefetcher(items(), "cuda")
    for i in range(3):
        batch, position = next(prefetcher)
        events.append(f"step {i}")
        assert position == (0, i + 1) and batch["frame"].tolist() == [i, i] and batch["skipped"] == [("token", "file", "reason")]
    with pytest.raises(ValueError, match="reader failed"):  # read ahead during step 2, raised at its own turn
        next(prefetcher)
    with pytest.raises(StopIteration):
        next(prefetcher)
    # each item: the step's stream waits for its copy, its tensor is recorded, the next read starts before its step
    assert events == ["read 0", "wait", "record", "read 1", "step 0", "wait", "record", "read 2", "step 1",
                      "wait", "record", "step 2"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_same_batches_arrive_in_order_on_the_device(dataset: FrameDataset) -> None:
    expected = list(batch_stream(dataset, pin=False))
    got = list(DevicePrefetcher(batch_stream(dataset, pin=True), "cuda"))
    assert [p for _, p in got] == [p for _, p in expected]
    for (have, _), (want, _) in zip(got, expected, strict=True):
        for key in ("frame", "neighbor", "index", "frame_index", "neighbor_frame_index"):
            assert have[key].is_cuda and torch.equal(have[key].cpu(), want[key]), key
        assert have["source"] == want["source"] and have["skipped"] == want["skipped"]
        assert have["num_skipped"] == want["num_skipped"]
