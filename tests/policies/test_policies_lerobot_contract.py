"""LeRobot's generic policy contract for our three types, checked the way LeRobot checks its own.

`test_get_policy_and_config_classes` is LeRobot v0.6.1's `tests/policies/test_policies.py` test of
the same name, unchanged but for the parameter list (huggingface/lerobot @ v0.6.1). It fails when a
`modeling_*` module uses `from __future__ import annotations`: the `config` annotation is then the
string "VlaDinoConfig", and `issubclass(cls, "VlaDinoConfig")` raises TypeError.
"""

import importlib
import inspect

import pytest
from lerobot.configs import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_policy_config
from lerobot.policies.pretrained import PreTrainedPolicy

import lerobot_policy_vla_dino  # noqa: F401  (registers the types, as LeRobot's plugin discovery does)

OUR_POLICIES = ["vla_dino", "act_vla_dino", "diffusion_vla_dino"]


@pytest.mark.parametrize("policy_name", OUR_POLICIES)
def test_get_policy_and_config_classes(policy_name: str):
    """Check that the correct policy and config classes are returned."""
    policy_cls = get_policy_class(policy_name)
    policy_cfg = make_policy_config(policy_name)
    assert policy_cls.name == policy_name
    assert issubclass(
        policy_cfg.__class__, inspect.signature(policy_cls.__init__).parameters["config"].annotation
    )


@pytest.mark.parametrize("policy_name", OUR_POLICIES)
def test_naming_convention_and_abstract_members(policy_name: str):
    """What `lerobot.policies.factory` resolves by name: <X>Config in configuration_<m>, <X>Policy in
    modeling_<m>, make_<name>_pre_post_processors in processor_<m>; nothing left abstract."""
    config_cls = PreTrainedConfig.get_choice_class(policy_name)
    policy_cls = get_policy_class(policy_name)
    stem = config_cls.__name__.removesuffix("Config")
    assert policy_cls.__name__ == stem + "Policy"
    assert policy_cls.__module__ == config_cls.__module__.replace("configuration_", "modeling_")
    processor = importlib.import_module(config_cls.__module__.replace("configuration_", "processor_"))
    assert callable(getattr(processor, f"make_{policy_name}_pre_post_processors"))
    assert issubclass(policy_cls, PreTrainedPolicy) and policy_cls.config_class is config_cls
    assert not inspect.isabstract(policy_cls) and not inspect.isabstract(config_cls)
    annotation = inspect.signature(policy_cls.__init__).parameters["config"].annotation
    assert annotation is config_cls  # a class, not the string a postponed annotation would give
