"""Two gloo processes give the same Sinkhorn targets, softmax centre, losses and (DDP)
gradients as one process on the concatenated batch."""

import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import ssl_dist_worker as w  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path):
    world = 2
    mp.spawn(w.worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    problem = w.make_problem()
    single = w.objective(problem)

    for rank, result in enumerate(ranks):
        rows = w.rank_rows(8, 4, rank, world)
        torch.testing.assert_close(result["targets"], single["targets"][rows])
        torch.testing.assert_close(result["patch_targets"], single["patch_targets"][result["patch_rows"]])
        torch.testing.assert_close(result["joint_targets"], single["targets"][rows])
        torch.testing.assert_close(result["joint_patch_targets"], single["patch_targets"][result["patch_rows"]])
        torch.testing.assert_close(result["softmax_targets"], single["softmax_targets"][rows])
        torch.testing.assert_close(result["center"], single["center"])
    # Per-rank means: the average over ranks (what DDP's gradient average sees) is the loss
    # of the concatenated batch.
    torch.testing.assert_close((ranks[0]["dino"] + ranks[1]["dino"]) / 2, single["dino"])
    torch.testing.assert_close((ranks[0]["ibot"] + ranks[1]["ibot"]) / 2, single["ibot"])

    reference = w.model_gradients(0, 1, distributed=False)
    torch.testing.assert_close((ranks[0]["grads"]["_loss"] + ranks[1]["grads"]["_loss"]) / 2, reference["_loss"])
    assert set(ranks[0]["grads"]) == set(reference)
    for name, grad in reference.items():
        if name != "_loss":  # DDP averaged the gradients: both ranks hold the same values
            torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(ranks[1]["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
