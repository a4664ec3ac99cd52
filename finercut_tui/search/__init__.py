"""Search strategies as event generators; commands flow in through the controller (no textual here)."""
