"""Non-finite and out-of-bounds actions never leave the runtime; the control loop's faults and fail-safe."""

import time

import numpy as np
import pytest

from vla_dino.runtime.chunking import ControlConfig, ControlLoop, Fault
from vla_dino.runtime.guard import ActionGuard, UnsafeActionError
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig, _action_stats


def observation(runtime, seed=0):
    return runtime._synthetic_observation(runtime.spec.inputs, seed=seed)


# ---------------------------------------------------------------- guard


def test_guard_bounds_from_stats_follow_the_formula():
    stats = {"min": np.array([-1.0, 0.0]), "max": np.array([1.0, 4.0]), "mean": np.zeros(2)}
    guard = ActionGuard.from_stats(stats, action_dim=2, margin=0.25)
    np.testing.assert_allclose(guard.low, [-1.5, -1.0])  # min - 0.25 (max - min)
    np.testing.assert_allclose(guard.high, [1.5, 5.0])
    ok = np.array([[1.5, -1.0], [0.0, 5.0]], np.float32)
    np.testing.assert_array_equal(guard.check(ok), ok)  # bounds are inclusive
    with pytest.raises(UnsafeActionError, match=r"step 1, dim 1: 5.01 not in \[-1, 5\]") as error:
        guard.check(np.array([[0, 0], [0, 5.01]], np.float32))
    assert error.value.reason == "out_of_bounds" and guard.trips["out_of_bounds"] == 1


def test_guard_refuses_nan_always_and_clips_only_when_asked():
    guard = ActionGuard(2, low=[-1, -1], high=[1, 1], clip=True)
    np.testing.assert_array_equal(guard.check(np.array([[3.0, -3.0]])), [[1.0, -1.0]])
    assert guard.clipped == 1
    for bad in ([[np.nan, 0.0]], [[0.0, np.inf]]):
        with pytest.raises(UnsafeActionError, match="NaN/inf") as error:
            guard.check(np.array(bad))
        assert error.value.reason == "non_finite"
    for shape in [(2,), (0, 2), (3, 3), (1, 2, 1)]:
        with pytest.raises(UnsafeActionError, match="expected \\(T >= 1, 2\\)") as error:
            guard.check(np.zeros(shape))
        assert error.value.reason == "bad_shape"
    with pytest.raises(ValueError, match="3 values"):
        ActionGuard(2, low=[0, 0, 0])
    with pytest.raises(ValueError, match="low\\[0\\]=1 > high\\[0\\]=0"):
        ActionGuard(1, low=[1], high=[0])


def test_runtime_refuses_the_nan_chunk_of_a_finite_but_huge_state(act_runtime):
    """The issue's case: observation.state = 1e30 (finite) used to return 24 of 24 actions NaN."""
    obs = {**observation(act_runtime), "observation.state": np.full(4, 1e30, np.float32)}
    with pytest.raises(UnsafeActionError, match="24 of 24 values NaN/inf") as error:
        act_runtime.predict_chunk(obs)
    assert error.value.reason == "non_finite"
    assert act_runtime.predict_chunk(observation(act_runtime)).shape == (8, 3)  # still serving


def test_runtime_bounds_come_from_the_checkpoint_stats(act_runtime, act_checkpoint):
    stats = _action_stats(act_runtime.postprocessor)
    low, high = np.asarray(stats["min"], np.float64), np.asarray(stats["max"], np.float64)
    np.testing.assert_allclose(act_runtime.guard.low, low - 0.1 * (high - low), rtol=1e-6)
    np.testing.assert_allclose(act_runtime.guard.high, high + 0.1 * (high - low), rtol=1e-6)
    assert any("dataset stats" in note for note in act_runtime.notes)
    # Explicit limits win; a chunk outside them never leaves predict_chunk.
    chunk = act_runtime.predict_chunk(observation(act_runtime))
    limit = float(np.abs(chunk).max()) / 2
    tight = PolicyRuntime(act_runtime.policy, act_runtime.preprocessor, act_runtime.postprocessor,
                          RuntimeConfig(device="cpu", warmup_iters=1, action_low=[-limit], action_high=[limit]))
    with pytest.raises(UnsafeActionError, match="outside the bounds") as error:
        tight.predict_chunk(observation(act_runtime))
    assert error.value.reason == "out_of_bounds"
    with pytest.raises(ValueError, match="--runtime.action_bounds='joint'"):
        RuntimeConfig(action_bounds="joint")
    with pytest.raises(ValueError, match="--runtime.bounds_margin=-1"):
        RuntimeConfig(bounds_margin=-1)


# ---------------------------------------------------------------- control loop


class Recorder:
    def __init__(self):
        self.sent, self.faults, self.stops = [], [], []

    def on_fault(self, fault: Fault, step: int):
        self.faults.append((fault.reason, step))
        return fault.last_safe_action


def make_loop(predict, recorder, get_observation=lambda: 0, **config):
    """Blocking, as fast as possible by default: one observation and one chunk per tick, deterministic."""
    config = ControlConfig(**{"fps": 0, "blocking": True, **config})
    return ControlLoop(predict, get_observation, recorder.sent.append, config, on_fault=recorder.on_fault, on_stop=recorder.stops.append)


@pytest.mark.parametrize("field, value", [("horizon", 0), ("replan_every", 0), ("fps", -1.0), ("fps", float("inf")),
                                          ("inference_timeout_s", 0.0), ("fault_grace_s", -0.1), ("blend_steps", -1),
                                          ("deadline_miss_s", 0.0), ("scheduler", "average")])
def test_control_config_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        ControlConfig(**{field: value})


def test_run_validates_num_steps():
    with pytest.raises(ValueError, match="num_steps"):
        ControlLoop(lambda o: np.zeros((2, 1)), lambda: 0, lambda a: None).run(-1)


def test_nan_chunk_is_a_fault_the_loop_holds_then_resumes():
    calls = iter(range(100))

    def predict(_):
        n = next(calls)
        return np.full((2, 3), np.nan if n in (3, 4) else float(n), np.float32)

    rec = Recorder()
    stats = make_loop(predict, rec, fault_grace_s=10, scheduler="blend", blend_steps=0).run(10)  # newest chunk wins
    sent = np.stack(rec.sent)
    assert np.isfinite(sent).all() and len(sent) == 10  # no NaN ever sent
    assert [r for r, _ in rec.faults][:1] == ["unsafe_action"]
    assert stats.fault_counts() == {"unsafe_action": 2} and stats.stopped_by is None
    # Under the fault the last safe action (chunk 2's first action, 2.0) was held.
    held = [step for _, step in rec.faults]
    assert all(sent[s, 0] == 2.0 for s in held)
    assert held == [3, 4] and sent[:, 0].tolist() == [0, 1, 2, 2, 2, 5, 6, 7, 8, 9]  # resumed on the next good chunk


def test_one_dimensional_chunk_is_refused_and_stops_after_the_grace():
    rec = Recorder()
    stats = make_loop(lambda _: np.zeros(3, np.float32), rec, fault_grace_s=0.0).run(5)
    assert rec.sent == [] and stats.stopped_by.reason == "unsafe_action" and "bad_shape" in stats.stopped_by.message
    assert rec.stops == [stats.stopped_by]


def test_inference_timeout_fires_on_fault_with_its_reason():
    def predict(obs):
        if obs >= 1:
            time.sleep(0.5)  # hangs from the second observation on
        return np.zeros((50, 2), np.float32)

    counter = iter(range(1000))
    rec = Recorder()
    stats = make_loop(predict, rec, get_observation=lambda: next(counter), fps=100, inference_timeout_s=0.1,
                      fault_grace_s=0.15, blocking=False).run(200)
    assert ("inference_timeout" in [r for r, _ in rec.faults])
    assert stats.stopped_by.reason == "inference_timeout" and rec.stops == [stats.stopped_by]
    assert stats.steps < 200


def test_stale_observation_and_observation_errors_are_faults():
    from vla_dino.runtime.cameras import StaleFrameError

    events = iter([0, StaleFrameError("frozen"), 2, EOFError("file ended")] + [4] * 100)

    def get_observation():
        item = next(events)
        if isinstance(item, BaseException):
            raise item
        return item

    rec = Recorder()
    stats = make_loop(lambda obs: np.full((1, 1), obs, np.float32), rec, get_observation=get_observation, fault_grace_s=10).run(8)
    reasons = [f.reason for f in stats.faults]
    assert reasons == ["stale_observation", "observation_error"]
    assert "frozen" in stats.faults[0].message and "EOFError: file ended" in stats.faults[1].message
    assert [a[0] for a in rec.sent] == [0, 0, 2, 2, 4, 4, 4, 4]  # held through each fault, resumed on the next chunk


def test_inference_errors_are_retried_and_recover_within_the_grace():
    calls = iter(range(100))

    def flaky(_):
        n = next(calls)
        if n in (1, 2):
            raise RuntimeError(f"cuda hiccup {n}")
        return np.full((1, 1), n, np.float32)

    rec = Recorder()
    stats = make_loop(flaky, rec, fault_grace_s=10).run(6)
    assert stats.fault_counts() == {"inference_error": 2} and stats.stopped_by is None
    assert [a[0] for a in rec.sent] == [0, 0, 0, 3, 4, 5]


def test_deadline_miss_is_a_fault_that_clears_on_time():
    rec = Recorder()
    slow_once = iter([0.0, 0.0, 0.08] + [0.0] * 100)

    def send(action):
        rec.sent.append(action)
        time.sleep(next(slow_once))  # the robot link stalls once for 80 ms (4 periods at 50 Hz)

    loop = ControlLoop(lambda _: np.zeros((100, 1), np.float32), lambda: 0, send,
                       ControlConfig(fps=50, fault_grace_s=1.0), on_fault=rec.on_fault)
    stats = loop.run(12)
    assert stats.fault_counts().get("deadline_miss", 0) >= 1 and stats.stopped_by is None
    assert rec.faults[0] == ("deadline_miss", 3) and len(rec.sent) == 12


def test_custom_on_fault_action_is_sent_and_send_errors_stop_at_once():
    rec = Recorder()
    zeros = lambda fault, step: np.zeros(2, np.float32)  # noqa: E731 - e.g. zero velocity
    chunks = iter([np.ones((1, 2))] + [np.full((1, 2), np.nan)] * 100)
    loop = ControlLoop(lambda _: next(chunks), lambda: 0, rec.sent.append, ControlConfig(fps=0, blocking=True, fault_grace_s=10), on_fault=zeros)
    loop.run(4)
    assert [a.tolist() for a in rec.sent] == [[1, 1], [0, 0], [0, 0], [0, 0]]

    def broken_link(action):
        raise ConnectionError("serial port gone")

    stops = []
    stats = ControlLoop(lambda _: np.ones((5, 2)), lambda: 0, broken_link, ControlConfig(fps=0), on_stop=stops.append).run(5)
    assert stats.stopped_by.reason == "send_error" and "serial port gone" in stats.stopped_by.message and stops == [stats.stopped_by]
