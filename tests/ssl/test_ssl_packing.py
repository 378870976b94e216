"""`DinoEncoder.forward_packed` (global + local crops in one backbone pass) equals the two-call path."""

import copy

import pytest
import torch
from transformers.models.dinov2.modeling_dinov2 import Dinov2DropPath

from vla_dino.encoder import DinoEncoder
from vla_dino.ssl import MultiCropAugmentation, SSLConfig, SSLModel

TOL = dict(atol=1e-5, rtol=0)


def _crops(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    globals_ = torch.randn(4, 3, 56, 56, generator=generator)  # 2B crops of 4×4 patches
    locals_ = torch.randn(6, 3, 28, 28, generator=generator)  # L·B crops of 2×2 patches
    masks = torch.rand(4, 16, generator=generator) < 0.4
    return globals_, locals_, masks


def _two_calls(encoder, globals_, locals_, masks):
    return [encoder(globals_, bool_masked_pos=masks), encoder(locals_)]


def _assert_tokens_close(packed, reference):
    for p, r in zip(packed, reference, strict=True):
        assert p.grid_size == r.grid_size
        torch.testing.assert_close(p.cls_token, r.cls_token, **TOL)
        torch.testing.assert_close(p.register_tokens, r.register_tokens, **TOL)
        torch.testing.assert_close(p.patch_tokens, r.patch_tokens, **TOL)


@pytest.mark.parametrize("size", ["small-test", "tiny_reg"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("use_masks", [True, False])
def test_packed_forward_equals_two_calls(size, train, use_masks):
    torch.manual_seed(0)
    encoder = DinoEncoder.from_size(size).train(train)
    for block in encoder.blocks:  # a drop-path module in train mode, inactive at p = 0
        block.drop_path = Dinov2DropPath(0.0)
    globals_, locals_, masks = _crops()
    masks = masks if use_masks else None
    packed = encoder.forward_packed([globals_, locals_], [masks, None])
    _assert_tokens_close(packed, _two_calls(encoder, globals_, locals_, masks))
    assert packed[1].register_tokens.shape[1] == encoder.num_register_tokens


@pytest.mark.parametrize("size", ["small-test", "tiny_reg"])
def test_packed_gradients_equal_two_calls(size):
    torch.manual_seed(0)
    reference = DinoEncoder.from_size(size).train()
    packed_encoder = copy.deepcopy(reference)
    globals_, locals_, masks = _crops(seed=1)

    def backward(tokens_list):
        generator = torch.Generator().manual_seed(2)  # the same random weights for both paths
        outputs = [x for tokens in tokens_list for x in (tokens.cls_token, tokens.patch_tokens)]
        # means keep the gradients O(1), so 1e-5 is an absolute bound well above fp32 rounding
        sum((torch.randn(x.shape, generator=generator) * x).mean() for x in outputs).backward()

    backward(_two_calls(reference, globals_, locals_, masks))
    backward(packed_encoder.forward_packed([globals_, locals_], [masks, None]))
    for (name, a), b in zip(reference.named_parameters(), packed_encoder.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)


class _EveryOtherCrop(torch.nn.Module):
    """A deterministic per-sample drop-path: drops crops 0, 2, 4, … of each call."""

    drop_prob = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = (torch.arange(x.shape[0]) % 2 == 1).to(x.dtype)
        return x * keep.view(-1, *([1] * (x.ndim - 1))) / self.drop_prob


def test_packed_drop_path_is_per_sample_of_each_set():
    encoder = DinoEncoder.from_size("tiny").train()
    for block in encoder.blocks:
        block.drop_path = _EveryOtherCrop()
    globals_, locals_, masks = _crops()
    packed = encoder.forward_packed([globals_, locals_], [masks, None])
    _assert_tokens_close(packed, _two_calls(encoder, globals_, locals_, masks))
    encoder.eval()  # inactive outside training, as Dinov2DropPath
    _assert_tokens_close(encoder.forward_packed([globals_, locals_], [masks, None]), [
        DinoEncoder.forward(encoder, globals_, masks), DinoEncoder.forward(encoder, locals_)
    ])


def test_packed_forward_checks_its_inputs():
    encoder = DinoEncoder.from_size("tiny")
    globals_, locals_, masks = _crops()
    with pytest.raises(ValueError, match="masks for"):
        encoder.forward_packed([globals_, locals_], [masks])
    with pytest.raises(ValueError, match="bool_masked_pos"):
        encoder.forward_packed([globals_, locals_], [None, masks])
    # an attention layer of a layout vla_dino.encoder.attention does not know (here: the runtime's fused one)
    from vla_dino.adapter.inference import fuse_qkv

    fuse_qkv(encoder.eval().requires_grad_(False))
    with pytest.raises(TypeError, match="FusedQKVAttention is not a Dinov2 attention layout"):
        encoder.forward_packed([globals_, locals_])


def _ssl_config(pack: bool) -> SSLConfig:
    config = SSLConfig()
    config.crops.global_size, config.crops.local_size, config.crops.num_local, config.crops.blur_kernel = 28, 14, 2, 5
    config.heads.hidden_dim, config.heads.bottleneck_dim, config.heads.num_prototypes = 32, 16, 64
    config.optim.batch_size, config.optim.drop_path, config.optim.pack_crops = 4, 0.0, pack
    return config


@pytest.mark.parametrize("shared_ibot", [True, False])
def test_ssl_loss_and_gradients_with_and_without_packing(shared_ibot):
    assert SSLConfig().optim.pack_crops is False  # opt-in
    torch.manual_seed(0)
    encoder = DinoEncoder.from_size("tiny_reg", image_size=28, patch_size=7)
    config = _ssl_config(pack=False)
    config.heads.shared_ibot = shared_ibot
    batch = MultiCropAugmentation.from_config(config, 7)(torch.randint(0, 256, (4, 3, 36, 36), dtype=torch.uint8))
    torch.manual_seed(1)
    two_calls = SSLModel(config, copy.deepcopy(encoder), total_steps=10).train()
    packed_config = copy.deepcopy(config)
    packed_config.optim.pack_crops = True
    packed = SSLModel(packed_config, copy.deepcopy(encoder), total_steps=10).train()
    packed.load_state_dict(two_calls.state_dict())  # same fresh heads
    assert packed.student.pack_crops and not two_calls.student.pack_crops
    out_a, out_b = two_calls(batch, step=3), packed(batch, step=3)
    torch.testing.assert_close(out_b.loss, out_a.loss, **TOL)
    for name in out_a.metrics:
        torch.testing.assert_close(out_b.metrics[name], out_a.metrics[name], **TOL, msg=name)
    out_a.loss.backward()
    out_b.loss.backward()
    for (name, a), b in zip(two_calls.student.named_parameters(), packed.student.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)
