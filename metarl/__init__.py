"""metarl: model-agnostic meta-reinforcement learning on gymnasium, MuJoCo and PyTorch."""

import metarl.envs  # noqa: F401  (registers the metarl/ task envs with gymnasium)

__version__ = "0.1.0"
