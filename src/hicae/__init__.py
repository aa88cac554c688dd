"""hicae: hierarchical in-context autoencoding on Qwen."""

from .config import HierarchyConfig, ICAEConfig
from .errors import CheckpointError, ConfigError, DataError, HicaeError
from .memory import Memory
from .hierarchy import HierarchicalICAE
from .model import ICAE
from .io import checkpoint  # noqa: F401,E402  binds ICAE.from_pretrained / save_pretrained / from_base (I/O above the model)

__version__ = "0.1.0"
__all__ = ["ICAE", "ICAEConfig", "Memory", "HierarchicalICAE", "HierarchyConfig", "HicaeError", "DataError", "ConfigError", "CheckpointError", "__version__"]
