"""Schedule values at chosen steps, parameter-group multipliers, and `apply_schedules`."""

import math

import pytest
import torch

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import SSLConfig, SSLModel, SSLSchedules


def _config(**optim) -> SSLConfig:
    config = SSLConfig()
    config.heads.hidden_dim, config.heads.bottleneck_dim, config.heads.num_prototypes = 16, 8, 16
    for key, value in optim.items():
        setattr(config.optim, key, value)
    return config


def test_schedule_values_at_chosen_steps():
    config = _config(freeze_last_layer_steps=None)
    s = SSLSchedules(total_steps=1000, peak_lr=0.004 * math.sqrt(256 / 1024), config=config)
    peak = 0.002
    assert s.peak_lr == pytest.approx(peak)
    # lr: linear warm-up over 10% (100 steps), then cosine to 1e-6.
    assert s.lr(0) == 0.0
    assert s.lr(50) == pytest.approx(peak / 2)
    assert s.lr(100) == pytest.approx(peak)
    assert s.lr(550) == pytest.approx(1e-6 + 0.5 * (peak - 1e-6))  # half-way through the cosine
    assert s.lr(1000) == pytest.approx(1e-6)
    # weight decay: cosine 0.04 → 0.4.
    assert s.weight_decay(0) == pytest.approx(0.04)
    assert s.weight_decay(500) == pytest.approx(0.22)
    assert s.weight_decay(999) == pytest.approx(0.4, abs=1e-5)
    # momentum: cosine 0.992 → 1.
    assert s.momentum(0) == pytest.approx(0.992)
    assert s.momentum(500) == pytest.approx(0.996)
    assert s.momentum(250) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)))
    # teacher temperature: linear 0.04 → 0.07 over 30%, then constant.
    assert s.teacher_temp(0) == pytest.approx(0.04)
    assert s.teacher_temp(150) == pytest.approx(0.055)
    assert s.teacher_temp(300) == s.teacher_temp(900) == pytest.approx(0.07)
    # last layer frozen for 1% of the steps by default.
    assert s.freeze_last_layer_steps == 10
    assert s.last_layer_lr(9) == 0.0 and s.last_layer_lr(10) == s.lr(10)


def _model(**optim) -> SSLModel:
    encoder = DinoEncoder.from_size("tiny", image_size=14, patch_size=7, num_hidden_layers=3)
    return SSLModel(_config(**optim), encoder, total_steps=100)


def test_param_group_multipliers():
    model = _model(batch_size=1024)
    groups = {g["name"]: g for g in model.param_groups()}
    named = {id(p): n for n, p in model.student.named_parameters()}
    by_param = {named[id(p)]: g for g in groups.values() for p in g["params"]}
    layers = 3
    prefix = "backbone.model."
    assert by_param[prefix + "embeddings.patch_embeddings.projection.weight"]["lr_mult"] == pytest.approx(0.9 ** (layers + 1) * 0.2)
    assert by_param[prefix + "embeddings.cls_token"]["lr_mult"] == pytest.approx(0.9 ** (layers + 1))
    assert by_param[prefix + "encoder.layer.0.attention.q_proj.weight"]["lr_mult"] == pytest.approx(0.9**layers)
    assert by_param[prefix + "encoder.layer.2.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.9)
    assert by_param[prefix + "layernorm.weight"]["lr_mult"] == pytest.approx(1.0)
    assert by_param["dino_head.mlp.0.weight"]["lr_mult"] == pytest.approx(1.0)
    for no_decay in ("encoder.layer.1.norm1.weight", "encoder.layer.1.mlp.fc1.bias", "encoder.layer.1.layer_scale1.lambda1",
                     "embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings"):
        assert by_param[prefix + no_decay]["wd_mult"] == 0.0, no_decay
    assert by_param[prefix + "encoder.layer.1.mlp.fc1.weight"]["wd_mult"] == 1.0
    assert by_param["dino_head.last_layer.weight"]["is_last_layer"]
    assert not by_param["dino_head.mlp.0.weight"]["is_last_layer"]
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.student.parameters()))


def test_apply_schedules_sets_each_group():
    model = _model(batch_size=256, freeze_last_layer_steps=5)
    model.config.continued.head_warmup_steps = 20
    optimizer = torch.optim.AdamW(model.param_groups())
    values = model.apply_schedules(optimizer, 15)
    s = model.schedules
    assert values == {"lr": s.lr(15), "last_layer_lr": s.lr(15), "weight_decay": s.weight_decay(15),
                      "momentum": s.momentum(15), "teacher_temp": s.teacher_temp(15)}
    for group in optimizer.param_groups:
        expected_lr = 0.0 if group["is_backbone"] else values["lr"] * group["lr_mult"]  # backbone frozen (head warm-up)
        assert group["lr"] == pytest.approx(expected_lr)
        assert group["weight_decay"] == pytest.approx(values["weight_decay"] * group["wd_mult"])
    model.apply_schedules(optimizer, 2)
    assert all(g["lr"] == 0.0 for g in optimizer.param_groups if g["is_last_layer"])  # last layer frozen
    model.apply_schedules(optimizer, 30)
    backbone = [g for g in optimizer.param_groups if g["is_backbone"]]
    assert all(g["lr"] == pytest.approx(s.lr(30) * g["lr_mult"]) for g in backbone)


def test_lr_scaling_needs_a_batch_size():
    model = _model()
    with pytest.raises(ValueError, match="optim.batch_size"):
        model.apply_schedules(torch.optim.AdamW(model.param_groups()), 0)
    with pytest.raises(ValueError, match="lr_mult"):
        _model(batch_size=8).apply_schedules(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()), 0)
