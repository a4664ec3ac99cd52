"""Healing a pruned model: LoRA on its kept sublayers (`train`), on instruction data or text (`data`),
configured by `config` (torch-free: every field is an option of `heal`).

`finercut-tui heal` runs them as a recipe (commands/heal_recipe.py): load, data, evaluate, train,
merge, evaluate, export, record.
"""
