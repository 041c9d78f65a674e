"""``python -m eggs_ptp.kernels``: build the CPU kernel now (scripts/setup.sh runs this at install)."""

import sys

from eggs_ptp.kernels.build import main

sys.exit(main())
