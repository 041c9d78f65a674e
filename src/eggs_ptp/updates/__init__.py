"""Weight updates: stages that change the kept weights, not only the mask."""

from eggs_ptp.updates.obs import ObsUpdate
from eggs_ptp.updates.refit import LeastSquaresRefit, output_error

__all__ = ["LeastSquaresRefit", "ObsUpdate", "output_error"]
