"""SSLModel: teacher setup, EMA update, head warm-up, Gram anchoring."""

import torch

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, SSLConfig, SSLModel, SSLTrainer


def _config() -> SSLConfig:
    config = SSLConfig()
    config.crops.global_size, config.crops.local_size, config.crops.num_local, config.crops.blur_kernel = 28, 14, 2, 5
    config.heads.hidden_dim, config.heads.bottleneck_dim, config.heads.num_prototypes = 32, 16, 64
    config.optim.batch_size = 4
    return config


def _encoder() -> DinoEncoder:
    return DinoEncoder.from_size("tiny", image_size=28, patch_size=7)


def _batch(config: SSLConfig):
    return MultiCropAugmentation.from_config(config, 7)(torch.randint(0, 256, (4, 3, 36, 36), dtype=torch.uint8))


def test_teacher_is_a_frozen_eval_copy_and_only_the_student_drops_paths():
    model = SSLModel(_config(), _encoder(), total_steps=10).train()
    assert not model.teacher.training and model.student.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    for s, t in zip(model.student.state_dict().values(), model.teacher.state_dict().values()):
        assert torch.equal(s, t)  # heads included: teacher heads are copies
    assert all(type(b.drop_path).__name__ == "Dinov2DropPath" for b in model.student_backbone.blocks)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for b in model.teacher_backbone.blocks)


def test_ema_update_formula():
    model = SSLModel(_config(), _encoder(), total_steps=100)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before_t = [p.clone() for p in model.teacher.parameters()]
    student = [p.clone() for p in model.student.parameters()]
    m = model.schedules.momentum(40)
    assert 0.992 < m < 1.0
    model.update_teacher(40)
    for t0, s, t1 in zip(before_t, student, model.teacher.parameters()):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s)


def test_forward_metrics_and_a_few_steps_reduce_the_loss():
    config = _config()
    config.optim.drop_path = 0.0
    model = SSLModel(config, _encoder(), total_steps=20)
    trainer = SSLTrainer(model)
    batch = _batch(config)
    first = trainer.step(batch, 0)
    assert set(first.metrics) >= {"dino_local", "dino_global", "ibot", "koleo", "teacher_entropy", "center_norm", "feature_std"}
    total = first.metrics["dino_local"] + first.metrics["dino_global"] + first.metrics["ibot"] + 0.1 * first.metrics["koleo"]
    torch.testing.assert_close(first.loss.detach(), total)
    assert first.metrics["center_norm"] == 0  # Sinkhorn
    assert 0 < first.metrics["teacher_entropy"] <= torch.log(torch.tensor(64.0)) + 1e-4
    for step in range(1, 8):
        last = trainer.step(batch, step)
    assert last.metrics["dino_global"] < first.metrics["dino_global"]


def test_continued_head_warmup_keeps_the_checkpoint_and_gram_anchors_it(tmp_path):
    checkpoint = _encoder()
    checkpoint.save_pretrained(tmp_path / "ckpt")
    config = _config()
    config.continued.head_warmup_steps, config.continued.gram_anchor = 3, True
    config.loss.gram_weight = 1.0
    model = SSLModel(config, DinoEncoder.from_pretrained(tmp_path / "ckpt"), total_steps=20)
    initial = {k: v.clone() for k, v in model.student_backbone.state_dict().items()}
    head = model.student.dino_head.mlp[0].weight.clone()
    trainer = SSLTrainer(model)
    batch = _batch(config)
    out = None
    for step in range(3):
        out = trainer.step(batch, step)
    assert out.metrics["gram"] >= 0 and "gram" in out.metrics
    for key, value in model.student_backbone.state_dict().items():  # lr 0 (and no decoupled decay)
        torch.testing.assert_close(value, initial[key], msg=key)
    assert not torch.equal(model.student.dino_head.mlp[0].weight, head)
    for step in range(3, 6):
        trainer.step(batch, step)
    moved = any(not torch.equal(v, initial[k]) for k, v in model.student_backbone.state_dict().items())
    assert moved
    # The reference stays the checkpoint; the Gram loss of the reference against itself is 0.
    for key, value in model.gram_reference.state_dict().items():
        torch.testing.assert_close(value, initial[key])
    assert all(not p.requires_grad for p in model.gram_reference.parameters())


def test_softmax_centering_reports_its_centre():
    config = _config()
    config.loss.centering = "softmax"
    model = SSLModel(config, _encoder(), total_steps=10)
    out = model(_batch(config), 0)
    assert out.metrics["center_norm"] > 0

