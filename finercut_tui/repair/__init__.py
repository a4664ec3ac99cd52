"""Training-free repair of a pruned model: least-squares patches folded into kept weights (lstsq.py) and
the projections they fold into (projections.py), the runs they cover (runs.py), and ReplaceMe's block selection (replaceme.py)."""

from finercut_tui.repair.lstsq import DEFAULT_RIDGE, OBJECTIVE, Patch, RepairOutcome, repair_model, repaired
from finercut_tui.repair.projections import (
    Projection,
    check_calibration,
    check_repairable,
    check_ridge,
    output_projection,
)
from finercut_tui.repair.replaceme import BlockChoice, replaceme_blocks
from finercut_tui.repair.runs import Run, removal_runs, residual_order

__all__ = [
    "DEFAULT_RIDGE",
    "OBJECTIVE",
    "BlockChoice",
    "Patch",
    "Projection",
    "RepairOutcome",
    "Run",
    "check_calibration",
    "check_repairable",
    "check_ridge",
    "output_projection",
    "removal_runs",
    "repair_model",
    "repaired",
    "replaceme_blocks",
    "residual_order",
]
