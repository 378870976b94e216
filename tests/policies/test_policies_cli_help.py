"""What `lerobot-train --policy.type=<ours> --help` tells a LeRobot user is complete and true.

The help is produced in-process by the same draccus parse `lerobot-train` runs on
`TrainPipelineConfig`; every field our configs declare has a help line, choices are listed, the
default towers say they download, and ACT's / Diffusion's ResNet fields say (and enforce) that
they are unused.
"""

import contextlib
import dataclasses
import io
import re

import draccus
import pytest
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.train import TrainPipelineConfig

from lerobot_policy_vla_dino import ACTVlaDinoConfig, DiffusionVlaDinoConfig, TowerBackboneConfig, VlaDinoConfig
from lerobot_policy_vla_dino.configuration_vla_dino import PolicyVisionConfig

OPTION = re.compile(r"^  (--policy\.[\w.]+)(?: (.*))?$")


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    out = {}
    for kind in ("vla_dino", "act_vla_dino", "diffusion_vla_dino"):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
            draccus.parse(TrainPipelineConfig, args=[f"--policy.type={kind}", "--help"])
        out[kind] = buffer.getvalue()
    return out


def options(text: str) -> dict[str, str]:
    """--policy.* option → its help text (the option line's tail and its indented continuation)."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = OPTION.match(line)
        if match:
            current = match.group(1)
            tail = (match.group(2) or "").split("  ", 1)  # "TYPE  help" when the help fits on the line
            found[current] = tail[1].strip() if len(tail) > 1 else ""
        elif current and line.startswith(" " * 24) and line.strip():
            found[current] = (found[current] + " " + line.strip()).strip()
        else:
            current = None
    return found


def own_fields(cls: type, base: type) -> list[str]:
    inherited = {f.name for f in dataclasses.fields(base)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in inherited or f.name in cls.__annotations__]


@pytest.mark.parametrize(
    "kind, config_cls, base, nested, nested_cls",
    [
        ("vla_dino", VlaDinoConfig, PreTrainedConfig, "vision", PolicyVisionConfig),
        ("act_vla_dino", ACTVlaDinoConfig, None, "backbone", TowerBackboneConfig),
        ("diffusion_vla_dino", DiffusionVlaDinoConfig, None, "backbone", TowerBackboneConfig),
    ],
)
def test_every_field_we_declare_has_help(helps, kind, config_cls, base, nested, nested_cls):
    found = options(helps[kind])
    declared = own_fields(config_cls, base or config_cls.__mro__[1])
    for name in declared:
        if name == nested:
            continue
        assert found.get(f"--policy.{name}"), f"--policy.{name} has no help in --policy.type={kind}"
    for field in dataclasses.fields(nested_cls):
        assert found.get(f"--policy.{nested}.{field.name}"), f"--policy.{nested}.{field.name} has no help"
    # the section header of the nested config carries a description, not a blank line
    header = re.search(rf"^{nested_cls.__name__} \['policy\.{nested}'\]:\n  (.*)$", helps[kind], re.M)
    assert header and header.group(1).strip(), f"{nested_cls.__name__} section has a blank description"


def test_defaults_and_choices_are_stated(helps):
    vla, act = options(helps["vla_dino"]), options(helps["act_vla_dino"])
    for found, prefix in ((vla, "--policy.vision"), (act, "--policy.backbone")):
        dino = found[f"{prefix}.dino"]
        assert "facebook/dinov2-with-registers-small" in dino and "downloaded from the Hugging Face hub" in dino
        assert "DINOv3" in dino and "SigLIP 2" in found[f"{prefix}.siglip"]
    assert "--policy.head {mlp,act_decoder}" in helps["vla_dino"]
    assert "--policy.vision.train_mode {frozen,full,last_n}" in helps["vla_dino"]
    assert "--policy.vision.projector {fused-gelu-mlp,mlp,linear,none}" in helps["vla_dino"]
    assert "(default: mlp)" in vla["--policy.vision.projector"]  # the policy's default, not the adapter's
    assert "--policy.backbone.dtype {float32,bfloat16}" in helps["act_vla_dino"]


@pytest.mark.parametrize(
    "kind, config_cls, fields",
    [
        ("act_vla_dino", ACTVlaDinoConfig, {"vision_backbone": "resnet34", "pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1",
                                            "replace_final_stride_with_dilation": True}),
        ("diffusion_vla_dino", DiffusionVlaDinoConfig, {"vision_backbone": "resnet34", "pretrained_backbone_weights": "x",
                                                        "use_group_norm": True}),
    ],
)
def test_resnet_fields_say_they_are_unused_and_reject_changes(helps, kind, config_cls, fields):
    found = options(helps[kind])
    for name, value in fields.items():
        assert "unused (policy.backbone replaces the ResNet)" in found[f"--policy.{name}"]
        with pytest.raises(ValueError, match=rf"policy\.{name}=.* has no effect in {kind}.*policy\.backbone"):
            config_cls(**{name: value})


def test_choices_are_enforced_on_the_command_line():
    config = draccus.parse(VlaDinoConfig, args=["--head=mlp", "--vision.dino=tiny", "--vision.train_mode=last_n",
                                                "--vision.trainable_blocks=1"])
    assert (config.head, config.vision.dino, config.vision.train_mode) == ("mlp", "tiny", "last_n")
    assert isinstance(config.vision, PolicyVisionConfig) and config.vision.projector == "mlp"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit):
        draccus.parse(VlaDinoConfig, args=["--head=transformer"])
    assert "invalid choice: 'transformer'" in stderr.getvalue()
