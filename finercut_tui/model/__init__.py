"""Load causal LMs and remove / restore their sublayers (no textual here).

Importing this package does not import torch (replay and show run without it); the torch-backed
names load on first use.
"""

from finercut_tui.model.adapters import ARCHITECTURES, architecture_for

__all__ = ["ARCHITECTURES", "PrunableModel", "architecture_for"]


def __getattr__(name: str):
    if name == "PrunableModel":
        from finercut_tui.model.surgery import PrunableModel

        return PrunableModel
    raise AttributeError(name)
