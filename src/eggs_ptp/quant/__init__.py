"""Weight quantization grids, shared by the pruning sweep, the file formats and the kernels."""

from eggs_ptp.quant.files import GRID_FILE, load_grids, save_grids
from eggs_ptp.quant.grid import GROUP_MULTIPLE, QUANTIZE, SCALE_DTYPE, Grid, QuantScheme
from eggs_ptp.quant.head import HEAD_SCHEME, HeadRecord, head_scheme, quantize_head

__all__ = [
    "GRID_FILE",
    "GROUP_MULTIPLE",
    "HEAD_SCHEME",
    "QUANTIZE",
    "SCALE_DTYPE",
    "Grid",
    "HeadRecord",
    "QuantScheme",
    "head_scheme",
    "load_grids",
    "quantize_head",
    "save_grids",
]
