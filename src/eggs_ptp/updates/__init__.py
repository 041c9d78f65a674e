"""Weight updates: stages that change the kept weights, not only the mask."""

from eggs_ptp.updates.obs import ObsUpdate

__all__ = ["ObsUpdate"]
