"""`python -m finercut_tui ...`: the same CLI as `finercut-tui ...` (for torchrun -m and srun)."""

import sys

from finercut_tui.cli import main

sys.exit(main())
