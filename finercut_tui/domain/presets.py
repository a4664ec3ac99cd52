"""`--reproduce NAME`: the settings of a paper's published runs, so its masks can be reproduced.

A preset sets the calibration (data, layout, size) and the search options the reference code used;
options given explicitly on the command line still win. Adding a preset is one entry in PRESETS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from finercut_tui.domain.spec import SETUP_PARTS, CalibrationSpec, SearchSetup
from finercut_tui.errors import FinercutError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    calibration: CalibrationSpec
    spec: dict[str, Any] = field(default_factory=dict)  # SearchSpec fields
    methods: tuple[str, ...] = ()  # the methods the paper defines (the first is the default)
    iterative_samples: int | None = None  # calibration samples when --iterative, if the paper uses fewer


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "finercut",
            "FinerCut (llm_dissect): js-ref distance in the model's dtype, WikiText-2 train as one stream, "
            "10 x 256 tokens",
            CalibrationSpec("wikitext2", 10, 256, "finercut"),
            spec={"metric": "js-ref", "distance_dtype": "model"},
            methods=("finercut",),
        ),
        Preset(
            "llm-drop",
            "LLM-Drop: C4 validation, documents + EOS as one stream, 256 x 2048 tokens (128 when iterative)",
            CalibrationSpec("c4", 256, 2048, "llm-drop"),
            methods=("attn-drop", "mlp-drop", "block-drop", "joint-drop"),
            iterative_samples=128,
        ),
    )
}


def preset_setup(name: str, method: str | None, iterative: bool | None) -> SearchSetup:
    """The setup `--reproduce name` starts from, for the method the user asked for (if any)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise FinercutError(f"unknown --reproduce {name!r}: choose one of {', '.join(PRESETS)}") from None
    method = method or preset.methods[0]
    if method not in preset.methods:
        raise FinercutError(
            f"--reproduce {name} covers {', '.join(preset.methods)}, not --method {method}: drop one of them"
        )
    calibration = preset.calibration
    if iterative and preset.iterative_samples:
        calibration = dataclasses.replace(calibration, samples=preset.iterative_samples)
    return SearchSetup(spec=SETUP_PARTS["spec"](method=method, **preset.spec), calibration=calibration)
