"""Action-chunk schedulers against their formulas and LeRobot's ACT temporal ensembler; the control loop."""

import time

import numpy as np
import pytest
import torch
from lerobot.policies.act.modeling_act import ACTTemporalEnsembler

from vla_dino.runtime.chunking import ChunkBlender, ControlConfig, ControlLoop, TemporalEnsembler


@pytest.mark.parametrize("coeff", [0.01, 0.5, -0.3])
def test_temporal_ensembling_matches_lerobot_act(coeff):
    """A chunk every step: our timeline ensembler equals ACT's online one step by step."""
    chunk_size, rng = 5, np.random.default_rng(0)
    ours, act = TemporalEnsembler(coeff), ACTTemporalEnsembler(coeff, chunk_size)
    for step in range(12):
        chunk = rng.standard_normal((chunk_size, 2)).astype(np.float32)
        ours.add_chunk(chunk, start_step=step, current_step=step)
        expected = act.update(torch.from_numpy(chunk)[None])[0].numpy()
        np.testing.assert_allclose(ours.action(step), expected, rtol=1e-5, atol=1e-6)


def test_temporal_ensembling_weights_follow_the_formula():
    """a_t = Σ_j w_j a^(j)_t / Σ_j w_j, w_j = exp(-m j), j = 0 the oldest chunk covering t."""
    m = 0.7
    ens = TemporalEnsembler(m)
    chunks = {0: np.arange(6.0)[:, None], 2: 10 + np.arange(6.0)[:, None], 3: 100 + np.arange(6.0)[:, None]}
    for start in (3, 0, 2):  # arrival order does not matter: age is the observation step
        ens.add_chunk(chunks[start], start, current_step=0)
    w = np.exp(-m * np.arange(3))
    values = np.array([chunks[0][4, 0], chunks[2][2, 0], chunks[3][1, 0]])  # all three cover step 4
    assert ens.action(4)[0] == pytest.approx((w * values).sum() / w.sum(), rel=1e-6)
    np.testing.assert_allclose(ens.weights(3), w / w.sum())
    assert ens.action(1)[0] == pytest.approx(1.0)  # only chunk 0 covers step 1
    assert ens.action(8)[0] == pytest.approx(105.0)  # only chunk 3 (steps 3..8) covers step 8
    assert ens.action(9) is None


def test_chunk_blender_drops_stale_actions_and_crossfades():
    k = 3
    blender = ChunkBlender(blend_steps=k)
    old = np.zeros((10, 1))
    new = 100 + np.arange(10.0)[:, None]
    blender.add_chunk(old, start_step=0, current_step=0)
    # Observed at step 2, arrived at step 5: new[0:3] are for steps already past.
    blender.add_chunk(new, start_step=2, current_step=5)
    for i in range(k):
        alpha = (i + 1) / (k + 1)
        assert blender.action(5 + i)[0] == pytest.approx((1 - alpha) * 0.0 + alpha * new[3 + i, 0])
    assert blender.action(5 + k)[0] == pytest.approx(new[3 + k, 0])
    assert blender.action(4) is None and blender.action(12) is None


def test_blocking_control_loop_acts_like_act_with_temporal_ensembling():
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(10)]
    observations = iter(range(10))
    sent = []
    loop = ControlLoop(
        predict_chunk=lambda obs: chunks[obs],
        get_observation=lambda: next(observations),
        send_action=sent.append,
        config=ControlConfig(fps=0, scheduler="ensemble", ensemble_coeff=0.1, blocking=True),
    )
    stats = loop.run(10)
    act = ACTTemporalEnsembler(0.1, 4)
    expected = [act.update(torch.from_numpy(c)[None])[0].numpy() for c in chunks]
    np.testing.assert_allclose(np.stack(sent), np.stack(expected), rtol=1e-5, atol=1e-6)
    assert (stats.steps, stats.chunks, stats.starved_steps) == (10, 10, 0)


def test_async_control_loop_keeps_the_rate_while_inference_is_slow():
    """Inference (30 ms) is slower than the 100 Hz tick: the loop keeps ticking from the chunks it has."""

    def slow_predict(obs_step):
        time.sleep(0.03)
        return np.full((20, 1), float(obs_step), np.float32)

    counter = iter(range(1000))
    sent = []
    config = ControlConfig(fps=100, scheduler="blend", blend_steps=2)
    stats = ControlLoop(slow_predict, lambda: next(counter), sent.append, config).run(40)
    assert len(sent) == 40 and stats.steps == 40
    assert 3 <= stats.chunks <= 20  # several chunks, far fewer than ticks
    assert stats.starved_steps == 0  # 20-step chunks outlast 30 ms of latency
    assert stats.achieved_hz > 50
    assert min(stats.inference_ms) >= 25


def test_failed_inference_is_a_fault_that_stops_the_loop_and_says_why():
    def broken(_):
        raise RuntimeError("model exploded")

    stops, sent = [], []
    loop = ControlLoop(broken, lambda: 0, sent.append, ControlConfig(fps=0, fault_grace_s=0), on_stop=stops.append)
    stats = loop.run(3)
    assert sent == []  # nothing was ever safe to send
    assert stats.stopped_by is not None and stats.stopped_by.reason == "inference_error"
    assert "model exploded" in stats.stopped_by.message and stops == [stats.stopped_by]
