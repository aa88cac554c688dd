"""hicae: hierarchical in-context autoencoding on Qwen."""

from .config import HierarchyConfig, ICAEConfig
from .errors import CheckpointError, ConfigError, DataError, HicaeError
from .memory import Memory
from .hierarchy import HierarchicalICAE
from .model import ICAE

__version__ = "0.1.0"
__all__ = ["ICAE", "ICAEConfig", "Memory", "HierarchicalICAE", "HierarchyConfig", "HicaeError", "DataError", "ConfigError", "CheckpointError", "__version__"]
