"""Writing a pruned model out: the folder formats, and the PRUNING.md card that goes with them."""
