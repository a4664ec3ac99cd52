"""Healing a pruned model: LoRA on its kept sublayers (`train`), on instruction data or text (`data`).

`finercut-tui heal` (commands/heal.py) wires them to a session: evaluate, train, merge, export, record.
"""
