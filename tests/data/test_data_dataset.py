"""FrameDataset indexing (stride, temporal neighbours), collation and DataLoader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vla_dino.data import FrameDataset, collate_frames, discover_sources, examples


def _red_index(frame: torch.Tensor) -> int:
    """Pattern frames have red = 16·t: recover t."""
    return round(float(frame[0].float().mean()) / 16)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset_logs")
    examples.write_image_folder(root / "ep0" / "front", 7, 0)  # frames 0..6
    examples.write_image_folder(root / "ep1" / "front", 3, 1)  # frames 0..2
    examples.write_video(root / "ep2" / "front.mp4", 10)
    examples.write_robomimic_hdf5(root / "demos.hdf5", num_demos=1, num_frames=5, cameras=("agentview",))
    broken = examples.write_image_folder(root / "ep3" / "front", 4, 3, suffix=".jpg")
    broken[2].write_bytes(b"\xff\xd8\xff\xe0 garbage")
    return root


def test_stride_keeps_every_kth_frame_of_each_episode(logs: Path) -> None:
    sources = [s for s in discover_sources([logs / "ep0", logs / "ep1"])]
    dataset = FrameDataset(sources, frame_size=32, stride=3)
    assert len(dataset) == 3 + 1  # ceil(7/3) + ceil(3/3)
    located = [(s.episode, frame) for s, frame in (dataset.locate(i) for i in range(len(dataset)))]
    assert located == [("ep0", 0), ("ep0", 3), ("ep0", 6), ("ep1", 0)]
    assert [_red_index(dataset[i]["frame"]) for i in range(len(dataset))] == [0, 3, 6, 0]
    assert dataset.locate(-1) == dataset.locate(3)
    with pytest.raises(IndexError, match="index 4 out of range for 4 frames"):
        dataset[4]


def test_neighbours_stay_in_the_episode_within_the_offset_and_are_deterministic(logs: Path) -> None:
    sources = discover_sources([logs / "ep0", logs / "ep1"])
    dataset = FrameDataset(sources, frame_size=32, stride=2, neighbor_offset=2, seed=5)
    draws = {}
    for index in range(len(dataset)):
        source, frame = dataset.locate(index)
        picks = {dataset.neighbor_frame(index) for _ in range(3)}
        assert len(picks) == 1  # same (seed, epoch, index) → same neighbour
        neighbor = picks.pop()
        assert neighbor != frame and abs(neighbor - frame) <= 2 and 0 <= neighbor < source.num_frames
        sample = dataset[index]
        assert sample["neighbor_frame_index"] == neighbor and _red_index(sample["neighbor"]) == neighbor
        assert sample["neighbor"].shape == sample["frame"].shape == (3, 32, 32)
        draws[index] = neighbor
    # over epochs every allowed offset shows up, and nothing else does
    seen = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        seen.add(dataset.neighbor_frame(2) - dataset.locate(2)[1])  # frame 4 of ep0
    assert seen == {-2, -1, 1, 2}
    dataset.set_epoch(0)
    assert {i: dataset.neighbor_frame(i) for i in draws} == draws
    other_seed = FrameDataset(sources, frame_size=32, stride=2, neighbor_offset=2, seed=6)
    assert [other_seed.neighbor_frame(i) for i in draws] != list(draws.values())


def test_one_frame_episode_is_its_own_neighbour(logs: Path) -> None:
    source = discover_sources([logs / "ep1" / "front" / "frame_1.png"])
    dataset = FrameDataset(source, frame_size=16, neighbor_offset=3)
    sample = dataset[0]
    assert sample["neighbor_frame_index"] == 0 and torch.equal(sample["neighbor"], sample["frame"])


def test_constructor_rejects_bad_settings(logs: Path) -> None:
    sources = discover_sources([logs / "ep0"])
    for kwargs, message in [
        (dict(stride=0), "stride=0; expected ≥ 1"),
        (dict(frame_size=0), "frame_size=0"),
        (dict(neighbor_offset=-1), "neighbor_offset=-1"),
    ]:
        with pytest.raises(ValueError, match=message):
            FrameDataset(sources, **kwargs)


def test_collate_drops_skipped_samples_and_reports_them(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs / "ep3"]), frame_size=16, neighbor_offset=1)
    samples = [dataset[i] for i in range(len(dataset))]
    # frame 2 is broken: its own sample, and the samples whose neighbour is frame 2, are skipped
    expected_none = {i for i in range(4) if i == 2 or dataset.neighbor_frame(i) == 2}
    assert {i for i, s in enumerate(samples) if s is None} == expected_none
    batch = collate_frames(samples)
    assert batch["num_skipped"] == len(expected_none)
    assert batch["frame"].shape == (4 - len(expected_none), 3, 16, 16) and batch["frame"].dtype == torch.uint8
    assert batch["neighbor"].shape == batch["frame"].shape
    assert batch["index"].tolist() == sorted(set(range(4)) - expected_none)
    assert len(batch["skipped"]) == len(expected_none)
    assert dataset.merge_skipped(batch) == len(expected_none)
    assert dataset.skipped_counts() == {str(logs / "ep3/front/frame_2.jpg"): len(expected_none)}
    everything_skipped = collate_frames([None, None])
    assert everything_skipped["num_skipped"] == 2 and everything_skipped["frame"].shape == (0, 3, 0, 0)


def test_dataset_pickles_without_open_files(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs]), frame_size=16)
    for index in range(len(dataset)):  # opens an HDF5 file and a video in this process
        dataset[index]
    assert dataset._readers is not None and dataset._readers["hdf5"].open_files
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._readers is None
    assert torch.equal(clone[len(dataset) - 1]["frame"], dataset[len(dataset) - 1]["frame"])
    dataset.close()


def test_dataloader_with_two_workers_reads_every_kind_and_merges_skips(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs]), frame_size=24, stride=2, neighbor_offset=1, seed=1)
    # every kind read (and its files opened) in the parent first: forked workers must neither
    # reuse nor free the parent's HDF5/FFmpeg handles
    serial = [dataset[i] for i in range(len(dataset))]
    assert dataset._readers["hdf5"].open_files and dataset._readers["video"].open_files
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate_frames,
                        generator=torch.Generator().manual_seed(0), persistent_workers=False)
    indices, skipped = [], 0
    for batch in loader:
        dataset.merge_skipped(batch)
        skipped += batch["num_skipped"]
        indices += batch["index"].tolist()
        for frame, neighbor, index in zip(batch["frame"], batch["neighbor"], batch["index"].tolist()):
            source, number = dataset.locate(index)
            assert _red_index(frame) == number and abs(_red_index(neighbor) - number) <= 1
    assert sorted(indices) == [i for i, s in enumerate(serial) if s is not None]
    assert skipped == sum(s is None for s in serial) > 0
    broken = str(logs / "ep3/front/frame_2.jpg")
    # the workers' skips reached the parent through the batches, plus the serial pass above
    assert dataset.skipped_counts()[broken] == 2 * skipped
    assert "frame_2.jpg" in dataset.skipped_summary()
