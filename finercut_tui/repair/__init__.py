"""Training-free repair of a pruned model: least-squares patches (lstsq.py), the projections they fold
into (projections.py), the runs they cover (runs.py). ReplaceMe's block choice is `--method replaceme`."""

from finercut_tui.repair.lstsq import DEFAULT_RIDGE, OBJECTIVE, Patch, RepairOutcome, repair_model, repaired
from finercut_tui.repair.projections import (
    Projection,
    check_calibration,
    check_repairable,
    check_ridge,
    output_projection,
)
from finercut_tui.repair.runs import Run, removal_runs, residual_order

__all__ = [
    "DEFAULT_RIDGE",
    "OBJECTIVE",
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
    "residual_order",
]
