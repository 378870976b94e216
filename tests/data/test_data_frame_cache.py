"""FrameCache: every source decoded once, in order, to disk; reads give the frames decoding gives, bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vla_dino.data import FrameCache, FrameDataset, collate_frames, discover_sources, examples

SIZE = 24


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    examples.write_video(root / "ep0" / "front.mp4", 12, gop=250)  # one keyframe: random reads decode from frame 0
    examples.write_image_folder(root / "ep1" / "wrist", 5, episode=1)
    return root


def _frames(dataset: FrameDataset) -> list[torch.Tensor | None]:
    return [None if (sample := dataset[i]) is None else sample["frame"] for i in range(len(dataset))]


def test_cached_frames_are_the_decoded_frames_and_an_unchanged_source_is_reused(logs: Path, tmp_path: Path):
    sources = discover_sources([logs])
    cache = FrameCache(tmp_path / "cache", SIZE)
    report = cache.build(sources, progress=False)
    assert (report.built, report.reused, report.frames, report.failed_frames) == (2, 0, 17, 0)
    assert report.bytes >= 17 * 3 * SIZE * SIZE
    decoded = _frames(FrameDataset(sources, frame_size=SIZE))
    cached = FrameDataset(sources, frame_size=SIZE, frame_cache=cache)
    reads = []
    real_read = cache.read
    cache.read = lambda source, frame: reads.append((source.kind, frame)) or real_read(source, frame)
    order = [7, 0, 11, 3, 16, 12]  # random order, both sources
    for index in order:
        torch.testing.assert_close(cached[index]["frame"], decoded[index], rtol=0, atol=0)
    located = [cached.locate(index) for index in order]
    assert reads == [(source.kind, frame) for source, frame in located]  # every read from the cache
    assert {kind for kind, _ in reads} == {"video", "images"}

    again = FrameCache(tmp_path / "cache", SIZE).build(sources, progress=False)
    assert (again.built, again.reused) == (0, 2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # frames + ok flags per source, no temporaries

    examples.write_video(logs / "ep0" / "front.mp4", 12, episode=3, gop=250)  # the video re-recorded
    os.utime(logs / "ep0" / "front.mp4", ns=(1, 1))  # a different mtime even on a coarse clock
    changed = FrameCache(tmp_path / "cache", SIZE)
    images = next(source for source in sources if source.kind == "images")
    assert (changed.build(sources, progress=False).built, changed.file_for(images) == cache.file_for(images)) == (1, True)


def test_a_frame_that_fails_to_decode_is_skipped_and_counted_as_without_the_cache(logs: Path, tmp_path: Path):
    broken = logs / "ep1" / "wrist" / "frame_2.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated: the header opens, the data does not
    sources = discover_sources([logs])
    cache = FrameCache(tmp_path / "cache", SIZE)
    assert cache.build(sources, progress=False).failed_frames == 1
    plain, cached = FrameDataset(sources, frame_size=SIZE), FrameDataset(sources, frame_size=SIZE, frame_cache=cache)
    from_cache = _frames(cached)
    for a, b in zip(_frames(plain), from_cache):
        assert (a is None and b is None) or torch.equal(a, b)
    broken_index = next(i for i in range(len(cached)) if cached.locate(i)[0].kind == "images" and cached.locate(i)[1] == 2)
    assert from_cache[broken_index] is None
    assert sum(cached.skipped_counts().values()) == sum(plain.skipped_counts().values()) == 1
    assert "failed to decode when the frame cache" in cached.skipped_summary()


def test_a_killed_build_leaves_nothing_a_later_run_trusts(logs: Path, tmp_path: Path, monkeypatch):
    sources = discover_sources([logs])
    real_decode = FrameDataset.decode_frame

    def decode(self, source, frame):
        if frame == 3:
            raise KeyboardInterrupt  # the run killed mid-source
        return real_decode(self, source, frame)

    monkeypatch.setattr(FrameDataset, "decode_frame", decode)
    with pytest.raises(KeyboardInterrupt):
        FrameCache(tmp_path / "cache", SIZE).build(sources, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written frames file, no temporaries
    monkeypatch.undo()
    assert FrameCache(tmp_path / "cache", SIZE).build(sources, progress=False).built == 2


def test_worker_processes_build_and_dataloader_workers_read(logs: Path, tmp_path: Path):
    sources = discover_sources([logs])
    cache = FrameCache(tmp_path / "cache", SIZE)
    assert cache.build(sources, workers=2, progress=False).built == 2  # two spawned decoders, a source each
    dataset = FrameDataset(sources, frame_size=SIZE, frame_cache=cache)
    loader = DataLoader(dataset, batch_size=17, num_workers=1, collate_fn=collate_frames)  # the cache is pickled
    (batch,) = list(loader)
    expected = torch.stack([f for f in _frames(FrameDataset(sources, frame_size=SIZE)) if f is not None])
    torch.testing.assert_close(batch["frame"], expected, rtol=0, atol=0)


def test_ranks_share_the_build(logs: Path, tmp_path: Path):
    sources = discover_sources([logs])
    first, second = FrameCache(tmp_path / "cache", SIZE), FrameCache(tmp_path / "cache", SIZE)
    assert first.build(sources, progress=False, shard=(0, 2)).built == 1  # rank 0 of 2: every other source
    assert len(first.missing(sources)) == 1
    assert second.build(sources, progress=False, shard=(1, 2)).built == 1
    assert first.missing(sources) == []
    dataset = FrameDataset(sources, frame_size=SIZE, frame_cache=first)  # rank 0 reads rank 1's source too
    assert all(np.array_equal(a, b) for a, b in zip(_frames(dataset), _frames(FrameDataset(sources, frame_size=SIZE))))


def test_a_reading_process_keeps_a_bounded_number_of_files_open(logs: Path, tmp_path: Path, monkeypatch):
    import vla_dino.data.frame_cache as frame_cache

    monkeypatch.setattr(frame_cache, "_MAX_OPEN_FILES", 1)  # thousands of episodes would exhaust file descriptors
    sources = discover_sources([logs])
    cache = FrameCache(tmp_path / "cache", SIZE)
    cache.build(sources, progress=False)
    dataset = FrameDataset(sources, frame_size=SIZE, frame_cache=cache)
    decoded = _frames(FrameDataset(sources, frame_size=SIZE))
    for index in [0, 16, 1, 15, 2]:  # alternating between the two sources
        assert torch.equal(dataset[index]["frame"], decoded[index])
        assert len(cache._open) == 1
