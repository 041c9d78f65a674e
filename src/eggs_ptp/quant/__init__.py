"""Weight quantization grids, shared by the pruning sweep, the file formats and the kernels."""

from eggs_ptp.quant.files import GRID_FILE, load_grids, save_grids
from eggs_ptp.quant.grid import GROUP_MULTIPLE, QUANTIZE, SCALE_DTYPE, Grid, QuantScheme

__all__ = ["GRID_FILE", "GROUP_MULTIPLE", "QUANTIZE", "SCALE_DTYPE", "Grid", "QuantScheme", "load_grids", "save_grids"]
