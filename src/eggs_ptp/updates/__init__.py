"""Weight updates: stages that change the kept weights, not only the mask."""

from eggs_ptp.updates.block import BlockReconstruction
from eggs_ptp.updates.obs import ObsUpdate
from eggs_ptp.updates.quantize import Quantization
from eggs_ptp.updates.refit import LeastSquaresRefit, output_error
from eggs_ptp.updates.swaps import MaskSwapRefinement
from eggs_ptp.updates.target import DenseModelTarget, TargetError

__all__ = [
    "BlockReconstruction",
    "DenseModelTarget",
    "LeastSquaresRefit",
    "MaskSwapRefinement",
    "ObsUpdate",
    "Quantization",
    "TargetError",
    "output_error",
]
