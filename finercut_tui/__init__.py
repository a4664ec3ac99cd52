"""finercut-tui: a terminal workbench for fine-grained layer pruning of LLMs."""

__version__ = "0.1.0"


def load_pruned(path, **kwargs):
    """Load a model exported with sublayers removed (see README, "Export")."""
    from finercut_tui.model.load_pruned import load_pruned as _load_pruned

    return _load_pruned(path, **kwargs)
