"""The pretraining command line and config tree: presets, dotted overrides, errors that name the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vla_dino.pretrain.__main__ import parse_args
from vla_dino.pretrain.config import PRESET_DIR, load_config, preset_path

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))  # every preset must load and be listed in --help


def test_help_documents_flags_and_overrides():
    result = subprocess.run(
        [sys.executable, "-m", "vla_dino.pretrain", "--help"], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert result.returncode == 0, result.stderr
    for flag in ["--frames", "--cameras", "--config", "--preset", "--init", "--output-dir", "--resume", "--steps",
                 "--batch-size", "--device", "--num-workers", "--set", "--ssl.optim.base_lr", "torchrun"] + PRESETS:
        assert flag in result.stdout, flag


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    config = load_config(preset_path(name))
    assert config.train.steps > 0 and config.data.batch_size > 0
    assert preset_path(name).parent == PRESET_DIR


def test_preset_recipe_values():
    continued = load_config(preset_path("continue_dinov2_base"))
    assert continued.model.init == "facebook/dinov2-base"
    assert continued.ssl.continued.head_warmup_steps > 0 and continued.ssl.optim.layer_decay < 0.9
    assert continued.ssl.continued.gram_anchor and continued.ssl.loss.gram_weight > 0
    assert load_config(preset_path("cpu_smoke")).model.init == "tiny"
    assert load_config(preset_path("vitl14_scratch")).distributed.strategy == "fsdp"


def test_cli_overrides_all_forms():
    args, overrides = parse_args(
        ["--frames", "a", "--frames", "b", "--steps", "7", "--ssl.optim.base_lr", "1e-4",
         "--train.precision=bf16", "--set", "log.every_steps=5", "--cameras", "front", "wrist", "--resume"]
    )
    assert args.resume == "auto"
    config = load_config(preset_path("cpu_smoke"), overrides)
    assert config.data.frames == ["a", "b"] and config.data.cameras == ["front", "wrist"]
    assert config.train.steps == 7 and config.ssl.optim.base_lr == pytest.approx(1e-4)
    assert config.train.precision == "bf16" and config.log.every_steps == 5


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="base_lrr"):
        load_config(preset_path("cpu_smoke"), {"ssl.optim.base_lrr": 1.0})
    with pytest.raises(ValueError, match="nosection"):
        load_config(preset_path("cpu_smoke"), {"nosection.x": 1})


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="train.steps"):
        load_config(preset_path("cpu_smoke"), {"train.steps": "many"})
    with pytest.raises(ValueError, match="train.stop_at_step"):
        load_config(preset_path("cpu_smoke"), {"train.steps": 5, "train.stop_at_step": 9})
    with pytest.raises(ValueError, match="distributed.strategy"):
        load_config(preset_path("cpu_smoke"), {"distributed.strategy": "zero3"})
    with pytest.raises(ValueError, match="loss.centering"):  # the SSL tree validates too
        load_config(preset_path("cpu_smoke"), {"ssl.loss.centering": "kmeans"})
    with pytest.raises(FileNotFoundError, match="cpu_smoke"):  # lists what exists
        preset_path("nope")
    with pytest.raises(ValueError, match="pack_crops.*strategy=ddp"):  # the packed forward bypasses FSDP2's hooks
        load_config(preset_path("cpu_smoke"), {"ssl.optim.pack_crops": True, "distributed.strategy": "fsdp"})


def test_cli_rejects_stray_arguments(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--frames", "a", "--bogus", "1"])
    assert "--bogus" in capsys.readouterr().err


def test_config_file_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)


def test_presets_inherit_the_ssl_recipe_and_list_only_differences():
    import yaml

    from vla_dino.configs import ssl_recipe_path
    from vla_dino.configs.loader import read_tree

    for name in PRESETS:
        ssl = yaml.safe_load(preset_path(name).read_text())["ssl"]
        assert ssl["base"] in ("../ssl/dinov2_default.yaml", "../ssl/dinov2_continued.yaml"), name
        recipe = read_tree(preset_path(name).parent / ssl["base"])
        changed = {f"{section}.{key}" for section, values in ssl.items() if section != "base" for key in values
                   if values[key] != recipe.get(section, {}).get(key)}
        listed = {f"{section}.{key}" for section, values in ssl.items() if section != "base" for key in values}
        assert listed == changed, (name, listed - changed)  # nothing the recipe already says
    continued = load_config(preset_path("continue_dinov2_base")).ssl
    assert continued.optim.warmup_fraction == read_tree(ssl_recipe_path("dinov2_continued"))["optim"]["warmup_fraction"]


def test_base_merges_deeply_and_refuses_cycles(tmp_path: Path):
    (tmp_path / "recipe.yaml").write_text("optim: {base_lr: 0.001, layer_decay: 0.5}\nloss: {koleo_weight: 0.0}\n")
    (tmp_path / "run.yaml").write_text("train: {steps: 9}\nssl:\n  base: recipe.yaml\n  optim: {layer_decay: 0.8}\n")
    config = load_config(tmp_path / "run.yaml")
    assert (config.ssl.optim.base_lr, config.ssl.optim.layer_decay, config.ssl.loss.koleo_weight) == (0.001, 0.8, 0.0)
    assert config.train.steps == 9
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("ssl: {base: nowhere.yaml}\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "c.yaml")
