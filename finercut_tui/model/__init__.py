"""Load causal LMs and remove / restore their sublayers (no textual here)."""

from finercut_tui.model.adapters import ARCHITECTURES, architecture_for
from finercut_tui.model.surgery import PrunableModel

__all__ = ["ARCHITECTURES", "PrunableModel", "architecture_for"]
