"""Deferred JPEG decoding (`FrameDataset(defer_jpeg=True)` + `JpegBatchDecoder`) against the workers' decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vla_dino.data import (DevicePrefetcher, FrameDataset, JpegBatchDecoder, collate_frames, discover_sources, examples, square_resize,
                           square_resize_tensor)


def _corrupt_huffman_table(path: Path) -> None:
    """A JPEG whose header reads fine but whose Huffman table is garbage: every decoder raises while decoding."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xc4")  # DHT marker
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    data[at + 4 : at + 2 + length] = b"\xff" * (length - 2)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpeg_logs")
    examples.write_image_folder(root / "ep0" / "front", 5, 0, suffix=".jpg")  # 64×48: no reduced-scale decode
    examples.write_image_folder(root / "ep1" / "front", 3, 1, suffix=".jpg", height=96, width=128)  # drafted at 1/2
    examples.write_image_folder(root / "ep2" / "front", 3, 2)  # PNG: decoded by the workers either way
    broken = examples.write_image_folder(root / "ep3" / "front", 4, 3, suffix=".jpg")
    broken[1].write_bytes(b"\xff\xd8\xff\xe0 garbage")  # truncated: the header check sends it to the workers' path
    _corrupt_huffman_table(broken[2])  # passes the header check, fails in the batch decode
    Image.fromarray(examples.pattern_frame(0, 4, height=8, width=8)).save(root / "ep4.jpg")  # under min_frame_side
    return root


def _run(dataset: FrameDataset, batches: list[list[int]], num_workers: int, decoder: JpegBatchDecoder | None) -> list[dict]:
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_frames, num_workers=num_workers)
    out = []
    for batch in loader:
        if decoder is not None:
            assert isinstance(batch["frame"], list)  # deferred rows stay apart until decoded
            batch = decoder(batch)
        dataset.merge_skipped(batch)
        out.append(batch)
    return out


def test_square_resize_tensor_matches_opencv_within_one_level() -> None:
    rng = np.random.default_rng(0)
    for height, width, size in [(50, 70, 32), (130, 100, 32), (20, 30, 32), (97, 131, 24)]:  # < 2×, 3× + trim, up, 4×
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = torch.from_numpy(square_resize(image, size)).permute(2, 0, 1)
        got = square_resize_tensor(torch.from_numpy(image).permute(2, 0, 1)[None], size)[0]
        assert got.dtype == torch.uint8 and got.shape == (3, size, size)
        assert (got.int() - expected.int()).abs().max() <= 1


def test_deferred_jpeg_decodes_like_the_workers_with_the_same_skips(logs: Path) -> None:
    sources = discover_sources([logs])
    settings = dict(frame_size=32, neighbor_offset=1, seed=3, min_frame_side=16)
    today = FrameDataset(sources, **settings)
    deferred = FrameDataset(sources, defer_jpeg=True, **settings)
    batches = [list(range(i, min(i + 5, len(today)))) for i in range(0, len(today), 5)]
    expected = _run(today, batches, 0, None)
    got = _run(deferred, batches, 1, JpegBatchDecoder(deferred, "cpu"))

    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()  # an all-skipped batch has no neighbour entries in either
        for key in want.keys() & {"index", "frame_index", "neighbor_frame_index"}:
            assert torch.equal(want[key], have[key]), key
        assert want["source"] == have["source"] and want["num_skipped"] == have["num_skipped"]
        for key in want.keys() & {"frame", "neighbor"}:
            assert have[key].dtype == torch.uint8 and have[key].shape == want[key].shape
            difference = (have[key].int() - want[key].int()).abs()
            drafted = torch.tensor(["ep1" in name for name in want["source"]], dtype=torch.bool)
            assert torch.all(difference[~drafted] <= 1)  # same decoder, resize within rounding
            if drafted.any():  # reduced-scale (draft) decode vs full decode + box average
                assert difference[drafted].float().mean() < 1.0
    assert today.skipped_counts() == deferred.skipped_counts()
    assert len(today.skipped_counts()) == 3  # the truncated file, the bad Huffman table, the 8×8 thumbnail
    assert today.skipped_summary() == deferred.skipped_summary()  # same files, counts and reasons


def test_a_batch_without_deferred_rows_passes_unchanged(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs / "ep2"]), frame_size=16, defer_jpeg=True)
    batch = collate_frames([dataset[i] for i in range(3)])
    assert JpegBatchDecoder(dataset)(batch) is batch


def test_an_all_skipped_batch_looks_like_collate_frames_leaves_it(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs / "ep3"]), frame_size=16, defer_jpeg=True)
    batch = JpegBatchDecoder(dataset)(collate_frames([dataset[2]]))  # the bad Huffman table: fails in the decoder
    assert batch["frame"].shape == (0, 3, 0, 0) and batch["num_skipped"] == 1 and batch["source"] == []
    assert dataset.merge_skipped(batch) == 1 and list(dataset.skipped_counts()) == [str(logs / "ep3/front/frame_2.jpg")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_cuda_decode_matches_cpu_decode(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs / "ep0", logs / "ep1", logs / "ep3"]), frame_size=32, defer_jpeg=True)
    batch = collate_frames([dataset[i] for i in range(len(dataset))])
    on_cpu = JpegBatchDecoder(dataset, "cpu")(dict(batch))
    on_gpu = JpegBatchDecoder(dataset, "cuda")(dict(batch))
    assert on_gpu["frame"].is_cuda and on_gpu["num_skipped"] == on_cpu["num_skipped"] == 2
    assert torch.equal(on_gpu["index"], on_cpu["index"])
    assert (on_gpu["frame"].cpu().int() - on_cpu["frame"].int()).abs().float().mean() < 1.0  # nvJPEG's IDCT vs libjpeg's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_cuda_decode_inside_the_prefetcher_side_stream(logs: Path) -> None:
    dataset = FrameDataset(discover_sources([logs / "ep0", logs / "ep1"]), frame_size=32, defer_jpeg=True)
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_frames, pin_memory=True)
    expected = [JpegBatchDecoder(dataset, "cpu")(batch) for batch in loader]
    decoder = JpegBatchDecoder(dataset, "cuda")
    got = list(DevicePrefetcher((decoder(batch) for batch in loader), "cuda"))  # decoded on the side stream
    for have, want in zip(got, expected, strict=True):
        assert have["frame"].is_cuda and torch.equal(have["index"].cpu(), want["index"])
        assert (have["frame"].cpu().int() - want["frame"].int()).abs().float().mean() < 1.0
