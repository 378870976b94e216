"""PolicyRuntime against plain eager LeRobot inference of the same checkpoint."""


import numpy as np
import pytest
import torch
from lerobot.policies.utils import prepare_observation_for_inference
from lerobot.processor import UnnormalizerProcessorStep

from vla_dino.runtime.loading import lerobot_predict_chunk, load_policy, resolve_checkpoint_dir
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig
from vla_dino.runtime.spec import ObservationError


def observations(runtime: PolicyRuntime, n: int) -> list[dict[str, np.ndarray]]:
    return [runtime._synthetic_observation(runtime.spec.inputs, seed=100 + i) for i in range(n)]


@pytest.fixture(scope="module")
def eager(act_checkpoint):
    return load_policy(act_checkpoint, "cpu")


def test_spec_follows_the_policy_config(act_runtime):
    spec = act_runtime.spec
    assert spec.policy_type == "act"
    assert {s.name: (s.dtype, s.shape) for s in spec.inputs} == {
        "observation.images.front": ("uint8", (32, 32, 3)),
        "observation.images.wrist": ("uint8", (24, 32, 3)),
        "observation.state": ("float32", (4,)),
    }
    assert (spec.chunk_size, spec.action_dim) == (8, 3)


def test_runtime_equals_eager_lerobot(act_runtime, eager):
    policy, pre, post = eager
    for obs in observations(act_runtime, 3):
        expected = lerobot_predict_chunk(policy, pre, post, obs, "cpu")
        got = act_runtime.predict_chunk(obs)
        assert got.shape == (8, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Different observations give different chunks (the buffers are refreshed every call).
    a, b = (act_runtime.predict_chunk(o) for o in observations(act_runtime, 2))
    assert np.abs(a - b).max() > 1e-4


def test_postprocessor_unnormalises_actions(act_runtime, eager):
    """The chunk is in robot units: normalised model output * std + mean from the checkpoint's stats."""
    policy, pre, post = eager
    obs = observations(act_runtime, 1)[0]
    batch = pre(prepare_observation_for_inference({k: v.copy() for k, v in obs.items()}, torch.device("cpu")))
    normalised = policy.predict_action_chunk(batch)[0].numpy()
    (unnormalizer,) = [step for step in post.steps if isinstance(step, UnnormalizerProcessorStep)]
    stats = unnormalizer.stats["action"]
    np.testing.assert_allclose(act_runtime.predict_chunk(obs), normalised * np.asarray(stats["std"]) + np.asarray(stats["mean"]), rtol=1e-5, atol=1e-5)


def test_checkpoint_step_folder_is_accepted(act_checkpoint, tmp_path):
    assert resolve_checkpoint_dir(act_checkpoint.parent) == act_checkpoint
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_checkpoint_dir(tmp_path)


def test_bf16_autocast_close_to_fp32(act_checkpoint, act_runtime):
    runtime = PolicyRuntime.from_pretrained(act_checkpoint, RuntimeConfig(device="cpu", dtype="bf16", warmup_iters=1))
    assert "autocast dtype=bf16" in " ".join(runtime.notes)
    for obs in observations(act_runtime, 2):
        reference = act_runtime.predict_chunk(obs)
        got = runtime.predict_chunk(obs)
        scale = 1 + np.abs(reference).max()
        assert np.abs(got - reference).max() < 0.05 * scale  # bf16 has ~3 significant digits
        assert not np.array_equal(got, reference)  # autocast really ran in bf16


def test_compile_matches_eager(act_checkpoint, act_runtime):
    # aot_eager traces through dynamo + AOTAutograd without the C++ codegen: the wiring, quickly.
    config = RuntimeConfig(device="cpu", dtype="fp32", compile=True, compile_backend="aot_eager", warmup_iters=1)
    runtime = PolicyRuntime.from_pretrained(act_checkpoint, config)
    for obs in observations(act_runtime, 2):
        np.testing.assert_allclose(runtime.predict_chunk(obs), act_runtime.predict_chunk(obs), rtol=1e-5, atol=1e-5)


def test_cuda_only_options_are_skipped_with_a_note_on_cpu(act_runtime, caplog):
    notes = " ".join(act_runtime.notes)
    assert "CUDA graphs skipped: device is cpu" in notes
    assert "pinned host buffers skipped" in notes
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            RuntimeConfig(device="cuda").resolved_device()
    with pytest.raises(ValueError, match="--runtime.dtype"):
        RuntimeConfig(dtype="int8").resolved_dtype(torch.device("cpu"))


def test_bad_observations_are_rejected_with_the_key_named(act_runtime):
    good = observations(act_runtime, 1)[0]
    cases = [
        ({k: v for k, v in good.items() if k != "observation.images.wrist"}, "missing \\['observation.images.wrist'\\]"),
        ({**good, "observation.images.side": good["observation.images.front"]}, "unknown \\['observation.images.side'\\]"),
        ({**good, "observation.images.front": good["observation.images.front"].astype(np.float32)}, "'observation.images.front': expected dtype uint8"),
        ({**good, "observation.images.front": good["observation.images.front"][:16]}, "expected shape \\(32, 32, 3\\)"),
        ({**good, "observation.state": np.full(4, np.nan, np.float32)}, "NaN"),
    ]
    for observation, message in cases:
        with pytest.raises(ObservationError, match=message):
            act_runtime.predict_chunk(observation)
    assert act_runtime.predict_chunk(good).shape == (8, 3)


def test_compile_mode_is_checked_and_defaults_to_a_fast_one():
    assert RuntimeConfig().compile_mode == "default"  # max-autotune benchmarks kernels for minutes: opt-in
    with pytest.raises(ValueError, match="--runtime.compile_mode='fastest'"):
        RuntimeConfig(compile_mode="fastest")


def test_profile_reports_each_stage_and_their_sum(act_runtime):
    stages = act_runtime.profile(observations(act_runtime, 1)[0], iters=2)
    assert set(stages) == {"upload", "preprocess", "policy", "postprocess", "download", "end_to_end", "eager"}  # no graph on CPU
    assert all(value > 0 for value in stages.values())
    assert stages["eager"] == pytest.approx(sum(stages[k] for k in ("upload", "preprocess", "policy", "postprocess", "download")))


def test_cast_weights_stores_the_compute_dtype_and_stays_close(act_checkpoint, act_runtime):
    config = RuntimeConfig(device="cpu", dtype="bf16", cast_weights=True, warmup_iters=1)
    runtime = PolicyRuntime.from_pretrained(act_checkpoint, config)
    assert "weights stored in bf16" in runtime.notes
    assert {p.dtype for p in runtime.policy.parameters()} == {torch.bfloat16}
    for obs in observations(act_runtime, 2):
        reference = act_runtime.predict_chunk(obs)
        assert np.abs(runtime.predict_chunk(obs) - reference).max() < 0.05 * (1 + np.abs(reference).max())
