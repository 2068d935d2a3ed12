"""vdmpp: diffusion objectives in JAX + Equinox (VDM++, samplers, masked diffusion)."""

import importlib.metadata

from . import analysis as analysis
from . import (
    adaptive as adaptive,
    losses as losses,
    masked as masked,
    oracle as oracle,
    process as process,
    schedules as schedules,
    weighting as weighting,
)


__version__ = importlib.metadata.version("vdmpp")
