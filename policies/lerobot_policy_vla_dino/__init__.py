"""LeRobot policy plugin over vla_dino tokens (discovered by LeRobot through the distribution name).

Importing the package registers three policy types with LeRobot (only the configuration modules
are imported here; LeRobot imports `modeling_*` / `processor_*` lazily by naming convention):
- `vla_dino`: our VisionTokenizer + an L1-regression MLP or ACT-style decoder chunk head;
- `act_vla_dino`: LeRobot's ACT with its ResNet replaced by our towers;
- `diffusion_vla_dino`: LeRobot's Diffusion Policy with its ResNet replaced by our towers.
"""

from lerobot_policy_vla_dino.configuration_act_vla_dino import ACTVlaDinoConfig
from lerobot_policy_vla_dino.configuration_diffusion_vla_dino import DiffusionVlaDinoConfig
from lerobot_policy_vla_dino.configuration_vla_dino import VlaDinoConfig
from lerobot_policy_vla_dino.feature_map import TowerBackboneConfig

__all__ = ["VlaDinoConfig", "ACTVlaDinoConfig", "DiffusionVlaDinoConfig", "TowerBackboneConfig"]
