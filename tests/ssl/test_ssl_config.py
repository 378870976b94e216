"""The SSL recipe files (configs/ssl/*.yaml) read by the package's one config loader."""

from pathlib import Path

import pytest

from vla_dino.configs.loader import load
from vla_dino.ssl import SSLConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ssl"


def test_yaml_presets_and_errors(tmp_path):
    assert load(SSLConfig, CONFIGS / "dinov2_default.yaml") == SSLConfig()  # the YAML mirrors the recipe
    config = load(SSLConfig, CONFIGS / "dinov2_default.yaml", overrides={"loss.koleo_weight": 0.0, "crops": {"num_local": 2}})
    assert config.loss.koleo_weight == 0.0 and config.crops.num_local == 2
    continued = load(SSLConfig, CONFIGS / "dinov2_continued.yaml")
    assert continued.continued.gram_anchor and continued.loss.gram_weight > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  koleo_wieght: 0.1\n")
    with pytest.raises(ValueError, match="koleo_wieght"):
        load(SSLConfig, bad)
    bad.write_text("continued:\n  gram_anchor: true\n")
    with pytest.raises(ValueError, match="gram_weight"):
        load(SSLConfig, bad)
    bad.write_text("loss:\n  centering: mean\n")
    with pytest.raises(ValueError, match="loss.centering"):
        load(SSLConfig, bad)
