"""Pieces of the frozen-encoder benchmark: history indexing, BC training, the results table."""

import numpy as np
import torch

from lerobot_env_vla_dino.frozen_benchmark import BCPolicy, BenchmarkRow, history_indices, markdown_table, train_bc


def test_history_indices_repeat_episode_start():
    episodes = np.array([0, 0, 0, 1, 1])
    np.testing.assert_array_equal(history_indices(episodes, 3), [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3], [3, 3, 4]])


def test_bc_head_fits_a_linear_policy():
    torch.manual_seed(0)
    features, states = torch.randn(256, 8), torch.randn(256, 3)
    actions = features[:, :2] * 2.0 - states[:, :2]
    policy = BCPolicy(8, 3, 2, history=1)
    losses = train_bc(policy, features, states, actions, history_indices(np.zeros(256, int), 1), epochs=60,
                      batch_size=64, lr=1e-3, seed=0, device="cpu")
    assert losses[-1] < 0.05 * losses[0]  # normalised-action MSE


def test_markdown_table_lists_every_encoder_and_task():
    rows = [
        BenchmarkRow("reach-v3", "vit:tiny", 0.5, (0.2, 0.8), 5, 10, 0.1, 64, 1.0, 2.0),
        BenchmarkRow("push-v3", "vit:tiny", 0.0, (0.0, 0.3), 0, 10, 0.1, 64, 1.0, 2.0),
        BenchmarkRow("reach-v3", "resnet18_scratch", 1.0, (0.7, 1.0), 10, 10, 0.1, 512, 1.0, 2.0),
    ]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| encoder | reach-v3 | push-v3 | mean |"
    assert table[2].startswith("| `vit:tiny` | 5/10 (0.20–0.80) | 0/10 (0.00–0.30) | 0.25 |")
    assert table[3] == "| `resnet18_scratch` | 10/10 (0.70–1.00) | – | 1.00 |"
