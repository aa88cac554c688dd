"""HierarchicalICAE (``model``): memory kept under a slot budget by merging blocks; its merge plan (``plan``),
pure Python. ``from hicae.hierarchy import HierarchicalICAE`` (or ``from hicae import ...``)."""

from .model import HierarchicalICAE

__all__ = ["HierarchicalICAE"]
