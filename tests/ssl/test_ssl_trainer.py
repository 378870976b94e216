"""SSLTrainer.step: nothing in the step waits for the device, a non-finite step changes nothing, and a good step is AdamW's."""

import copy
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, SSLConfig, SSLModel, SSLTrainer


def tiny(seed: int = 0, centering: str = "sinkhorn") -> tuple[SSLModel, object]:
    torch.manual_seed(seed)
    config = SSLConfig()
    config.loss.centering = centering
    config.crops.global_size, config.crops.local_size, config.crops.num_local = 28, 14, 2
    config.heads.num_prototypes, config.heads.hidden_dim, config.heads.bottleneck_dim = 64, 32, 16
    config.optim.batch_size = 4
    encoder = DinoEncoder.from_size("tiny")
    model = SSLModel(config, encoder, total_steps=10).train()
    crops = MultiCropAugmentation.from_config(config, encoder.patch_size)(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    return model, crops


# Ops that make the host wait for a GPU: reading a value (`.item()`, `bool()`, a tensor passed where a Scalar
# is expected), ops whose output size depends on the values (`nonzero`, boolean indexing, …), and a tensor made
# from Python numbers (`torch.tensor`, `new_tensor`: on a GPU a blocking host→device copy).
DEVICE_WAITS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.nonzero.default", "aten.lift_fresh.default",
                "aten.masked_select.default", "aten.equal.default", "aten.unique.default", "aten._unique2.default",
                "aten.unique_consecutive.default", "aten.repeat_interleave.Tensor"}


class DeviceWaits(TorchDispatchMode):
    """Records every op under it that would wait for a GPU if its tensors lived there, with the vla_dino
    function that called it. Works at the dispatcher, so it sees host reads made inside C++ too (a 0-dim
    tensor bound to a Scalar argument), which no Python-level patch can see; on CPU nothing waits, so this
    is how a CPU test checks the GPU path."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = str(func).startswith("aten.index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if str(func) in DEVICE_WAITS or bool_index:
            caller = next((f"{Path(f.filename).name}:{f.name}" for f in reversed(traceback.extract_stack())
                           if "/vla_dino/" in f.filename), "?")
            self.found.append((str(func), caller))
        return func(*args, **(kwargs or {}))


def test_the_step_never_waits_for_the_device():
    model, crops = tiny()
    trainer = SSLTrainer(model, max_nonfinite_steps=3)
    trainer.step(crops, 0)  # first step: lazy state (optimiser moments, schedules) built outside the check
    with DeviceWaits() as waits:
        result = trainer.step(crops, 1)
    assert waits.found == []
    assert bool(result.finite) and torch.isfinite(result.loss)


def test_multi_crop_waits_only_on_host_tensors():
    """The augmentation's value-dependent ops all act on tensors it makes on the host by design (the mask
    generator's numpy seed and masks, the masked-patch index, which crops get blurred); none on the frames'
    device. (Its constants are made once per device: a first call outside the check.)"""
    config = SSLConfig()
    config.crops.global_size, config.crops.local_size, config.crops.num_local = 28, 14, 2
    augment = MultiCropAugmentation.from_config(config, 14)
    augment(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    with DeviceWaits() as waits:
        augment(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
    assert set(waits.found) == {("aten._local_scalar_dense.default", "masking.py:sample_masks"),
                                ("aten.lift_fresh.default", "masking.py:sample_masks"),
                                ("aten.nonzero.default", "photometric.py:random_blur"),
                                ("aten.nonzero.default", "augment.py:__call__")}


@pytest.mark.parametrize("centering", ["sinkhorn", "softmax"])  # softmax: its centre buffer too
def test_a_non_finite_step_leaves_weights_optimiser_and_teacher_exactly_as_they_were(monkeypatch, centering):
    model, crops = tiny(centering=centering)
    trainer = SSLTrainer(model)
    trainer.step(crops, 0)
    before_model = copy.deepcopy(model.state_dict())
    before_optim = copy.deepcopy(trainer.optimizer.state_dict())
    forward = SSLModel.forward

    def poisoned(self, batch, step):
        output = forward(self, batch, step)
        output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(SSLModel, "forward", poisoned)
    result = trainer.step(crops, 1)
    assert not bool(result.finite) and torch.isnan(result.loss)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_model[key]), key
    after_optim = trainer.optimizer.state_dict()["state"]
    for index, state in before_optim["state"].items():
        for name, value in state.items():
            assert torch.equal(after_optim[index][name], value), (index, name)


@pytest.mark.parametrize("step", [3, 6])  # after the lr warm-up's first steps (lr 0 at step 0)
def test_a_good_step_is_torch_adamw_then_the_ema(step):
    """The fused step against the same step written with torch's default (foreach) AdamW and an explicit EMA."""
    model, crops = tiny()
    reference = copy.deepcopy(model)
    trainer = SSLTrainer(model)
    torch.manual_seed(1)  # the same drop-path draws on both sides
    result = trainer.step(crops, step)

    optimizer = torch.optim.AdamW(reference.param_groups(), lr=0.0, weight_decay=0.0, betas=tuple(reference.config.optim.betas))
    reference.apply_schedules(optimizer, step)
    torch.manual_seed(1)
    reference(crops, step).loss.backward()
    reference.clip_gradients()
    optimizer.step()
    momentum = reference.schedules.momentum(step)
    with torch.no_grad():
        for teacher, student in zip(reference.teacher.parameters(), reference.student.parameters()):
            teacher.mul_(momentum).add_(student, alpha=1 - momentum)

    assert bool(result.finite)
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), name


def _poison_from(monkeypatch, first_bad: int, last_bad: int | None = None) -> None:
    """The loss turns NaN at steps first_bad..last_bad (inclusive; None: from then on)."""
    forward = SSLModel.forward

    def poisoned(self, batch, step):
        output = forward(self, batch, step)
        if step >= first_bad and (last_bad is None or step <= last_bad):
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(SSLModel, "forward", poisoned)


def test_after_the_limit_of_non_finite_steps_the_device_skips_good_steps_too_until_reset(monkeypatch):
    """The halt that lets the loop read a step one late: the step queued after the streak reached the
    limit changes nothing, although its own loss is finite."""
    model, crops = tiny()
    trainer = SSLTrainer(model, max_nonfinite_steps=2)
    trainer.step(crops, 0)
    _poison_from(monkeypatch, 1, 2)  # steps 1 and 2 are bad: the limit
    results = [trainer.step(crops, step) for step in (1, 2)]
    before = copy.deepcopy(model.state_dict())
    halted = trainer.step(crops, 3)  # finite, but halted
    assert [bool(r.finite) for r in results] == [False, False] and bool(halted.finite)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    trainer.set_nonfinite_streak(2)  # a resume: the count goes on, the halt is lifted
    trainer.step(crops, 4)
    assert any(not torch.equal(value, before[key]) for key, value in model.state_dict().items())


def test_to_host_gives_the_step_values_as_numbers():
    model, crops = tiny()
    result = SSLTrainer(model).step(crops, 1)
    values = result.to_host().wait()
    assert values.finite is True and values.loss == pytest.approx(float(result.loss))
    assert values.grad_norm == pytest.approx(float(result.grad_norm))
    assert values.metrics == pytest.approx({k: float(v) for k, v in result.metrics.items()})
    assert values.schedule == result.schedule


def test_a_compiled_step_matches_the_eager_step():
    """train.compile: student and teacher compiled in place (same state-dict keys), no graph break in
    their forward, and the same weights after three steps. aot_eager traces exactly what inductor
    compiles without its minute of C++ code generation on this CPU."""
    import torch._dynamo

    states = []
    for options in (None, {"backend": "aot_eager", "fullgraph": True}):
        torch._dynamo.reset()
        model, crops = tiny()
        trainer = SSLTrainer(model, compile=options)
        torch.manual_seed(1)
        for step in range(3):
            assert bool(trainer.step(crops, step).finite)
        states.append(model.state_dict())
    eager, compiled = states
    assert list(eager) == list(compiled)
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch's own sync detector)")
def test_on_cuda_neither_crops_nor_step_synchronise():
    """The same claim checked by torch itself on a GPU: sync debug mode 'error' raises on any synchronising call."""
    model, crops = tiny()
    model = model.cuda()
    trainer = SSLTrainer(model, max_nonfinite_steps=3)
    augment = MultiCropAugmentation.from_config(model.config, 14)
    frames = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, device="cuda")
    trainer.step(augment(frames), 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = trainer.step(augment(frames), 1)
        values = result.to_host()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert values.wait().finite


@pytest.mark.parametrize("centering, expected", [("sinkhorn", ["max", "sum", "sum", "sum"]), ("softmax", ["sum"])])
def test_a_step_s_two_heads_share_their_target_all_reduces(monkeypatch, centering, expected):
    # DINO's and iBOT's targets: one head's collectives for both (8 → 4 with 3 Sinkhorn-Knopp iterations, 2 → 1 softmax)
    import vla_dino.ssl.centering as centering_module

    calls = []
    monkeypatch.setattr(centering_module, "all_reduce_sum", lambda t: calls.append("sum") or t)
    monkeypatch.setattr(centering_module, "all_reduce_max", lambda t: calls.append("max") or t)
    model, crops = tiny(centering=centering)
    assert model.config.loss.ibot_weight > 0 and model.config.loss.sinkhorn_iterations == 3
    model(crops, 0)
    assert calls == expected
