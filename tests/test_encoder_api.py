"""DinoEncoder against transformers itself: parity, layers, masks, save/load, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

from vla_dino import DinoEncoder, ImagePreprocessor
from vla_dino.encoder import config_for_size, size_names


@pytest.fixture(params=["tiny", "tiny_reg"])
def encoder(request) -> DinoEncoder:
    return DinoEncoder.from_size(request.param).eval()


def test_matches_transformers_forward(encoder):
    x = torch.randn(2, 3, 56, 42)  # non-square: 4×3 patches
    with torch.no_grad():
        ours = encoder(x)
        ref = encoder.model(x, output_hidden_states=True)
        layers = encoder.get_intermediate_layers(x, layers=[0, -2, -1])
    prefix = 1 + encoder.num_register_tokens
    assert ours.grid_size == (4, 3)
    assert ours.patch_tokens.shape == (2, 12, encoder.hidden_size)
    assert ours.register_tokens.shape == (2, encoder.num_register_tokens, encoder.hidden_size)
    torch.testing.assert_close(ours.cls_token, ref.last_hidden_state[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(ours.patch_tokens, ref.last_hidden_state[:, prefix:], rtol=0, atol=0)
    # hidden_states[k + 1] is the raw output of block k (hidden_states[0] = embeddings)
    for tokens, block in zip(layers, [0, encoder.num_layers - 2, encoder.num_layers - 1]):
        raw = ref.hidden_states[block + 1]
        torch.testing.assert_close(tokens.patch_tokens, raw[:, prefix:], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tokens.cls_token, raw[:, 0], rtol=1e-6, atol=1e-6)
    normed = encoder.get_intermediate_layers(x, -1, norm=True)[0]
    torch.testing.assert_close(normed.patch_tokens, ours.patch_tokens, rtol=1e-6, atol=1e-6)
    assert ours.patch_map().shape == (2, encoder.hidden_size, 4, 3)
    torch.testing.assert_close(ours.patch_map()[:, :, 1, 2], ours.patch_tokens[:, 1 * 3 + 2])


def test_masks_change_exactly_the_masked_embeddings(encoder):
    x = torch.randn(2, 3, 56, 56)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 3, 9]] = True
    mask[1, 15] = True
    with torch.no_grad():
        plain = encoder.model.embeddings(x)
        masked = encoder.model.embeddings(x, bool_masked_pos=mask)
        pos = encoder.model.embeddings.position_embeddings
    prefix = 1 + encoder.num_register_tokens
    changed = (plain != masked).any(-1)[:, prefix:]
    assert torch.equal(changed, mask)
    # a masked token is the mask token plus its position embedding (mask applied before position)
    expected = encoder.model.embeddings.mask_token[0] + pos[0, 1 + 3]
    torch.testing.assert_close(masked[0, prefix + 3], expected)
    with torch.no_grad():
        assert torch.equal(encoder(x, bool_masked_pos=torch.zeros_like(mask)).patch_tokens, encoder(x).patch_tokens)
        assert not torch.allclose(encoder(x, bool_masked_pos=mask).patch_tokens, encoder(x).patch_tokens)


def test_save_pretrained_roundtrip_with_transformers_automodel(encoder, tmp_path):
    with torch.no_grad():
        encoder.model.embeddings.cls_token.normal_()  # not the init values
    folder = encoder.save_pretrained(tmp_path / "enc")
    x = torch.randn(1, 3, 42, 56)
    auto = AutoModel.from_pretrained(folder).eval()
    ours = DinoEncoder.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = encoder(x)
        torch.testing.assert_close(auto(x).last_hidden_state[:, 0], expected.cls_token, rtol=0, atol=0)
        torch.testing.assert_close(ours(x).patch_tokens, expected.patch_tokens, rtol=0, atol=0)
    assert type(auto) is type(encoder.model)


def test_named_sizes_have_released_configs():
    assert {"vits14", "vitb14", "vitl14", "vitg14", "vitl14_reg", "tiny"} <= set(size_names())
    large = config_for_size("vitl14_reg")
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    assert large.num_register_tokens == 4 and large.image_size == 518 and large.patch_size == 14
    giant = config_for_size("vitg14")
    assert giant.use_swiglu_ffn and giant.hidden_size == 1536 and giant.num_hidden_layers == 40
    assert config_for_size("tiny", drop_path_rate=0.1).drop_path_rate == 0.1


def test_preprocessing_accepts_arrays_pil_and_tensors():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(70, 50, 3), dtype=np.uint8)
    pre = ImagePreprocessor(size=56)
    from_numpy = pre(image)
    assert from_numpy.shape == (1, 3, 56, 56)
    torch.testing.assert_close(pre(Image.fromarray(image)), from_numpy)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    torch.testing.assert_close(pre(chw), from_numpy)
    torch.testing.assert_close(pre(chw.float() / 255), from_numpy, atol=1e-6, rtol=0)
    torch.testing.assert_close(pre(np.stack([image, image])), torch.cat([from_numpy, from_numpy]))
    torch.testing.assert_close(pre([image, chw]), torch.cat([from_numpy, from_numpy]))
    # a uniform mid-grey image normalises to (0.5 - mean) / std in every pixel
    grey = pre(np.full((28, 28, 3), 128, np.uint8))
    torch.testing.assert_close(grey[0, 0], torch.full((56, 56), (128 / 255 - 0.485) / 0.229))


def test_resize_policies():
    wide = np.full((30, 90, 3), 255, np.uint8)
    letterbox = ImagePreprocessor(size=(42, 84), resize_mode="letterbox")(wide)
    assert letterbox.shape == (1, 3, 42, 84)
    assert torch.allclose(letterbox[0, :, :7], torch.zeros(3, 7, 84), atol=1e-6)  # padding normalises to 0
    native = ImagePreprocessor(resize_mode="none")(np.zeros((45, 100, 3), np.uint8))
    assert native.shape == (1, 3, 42, 98)
    crop = ImagePreprocessor(size=56, resize_mode="center_crop")(wide)
    assert crop.shape == (1, 3, 56, 56)
    with pytest.raises(ValueError, match="different sizes"):
        ImagePreprocessor(resize_mode="none")([np.zeros((28, 28, 3), np.uint8), np.zeros((42, 28, 3), np.uint8)])


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (np.zeros((28, 28, 4), np.uint8), ValueError, r"\(H, W, 3\)"),
        (np.zeros((28, 28), np.uint8), ValueError, r"\(H, W, 3\)"),
        (np.zeros((28, 28, 3), np.uint16), TypeError, "uint16"),
        (torch.zeros(4, 28, 28), ValueError, r"\(3, H, W\)"),
        (torch.zeros(3, 28, 28, dtype=torch.int32), TypeError, "int32"),
        (Image.new("RGBA", (28, 28)), ValueError, "RGBA"),
        ("frame.png", TypeError, "unsupported type str"),
        (np.zeros((10, 28, 3), np.uint8), ValueError, "smaller than one 14×14 patch"),
    ],
)
def test_bad_images_get_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        ImagePreprocessor(size=28, resize_mode="none")(bad)


def test_bad_encoder_inputs_get_clear_errors(tmp_path):
    encoder = DinoEncoder.from_size("tiny")
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        encoder(torch.zeros(1, 4, 28, 28))
    with pytest.raises(TypeError, match="normalised floats"):
        encoder(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="smaller than one"):
        encoder(torch.zeros(1, 3, 10, 28))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        encoder(torch.zeros(1, 3, 30, 28))
    with pytest.raises(ValueError, match=r"bool_masked_pos.*expected bool \(1, 4\)"):
        encoder(torch.zeros(1, 3, 28, 28), bool_masked_pos=torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(IndexError, match="layer 5 out of range"):
        encoder.get_intermediate_layers(torch.zeros(1, 3, 28, 28), 5)
    with pytest.raises(ValueError, match="unknown encoder size 'vitz14'.*vits14"):
        DinoEncoder.from_size("vitz14")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DinoEncoder.from_pretrained(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="encoder folder not found"):
        DinoEncoder.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        DinoEncoder.from_pretrained(tmp_path / "empty")
