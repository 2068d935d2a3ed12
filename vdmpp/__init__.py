"""vdmpp: diffusion objectives in JAX + Equinox (VDM++, samplers, masked diffusion)."""

import importlib.metadata

from . import (
    losses as losses,
    oracle as oracle,
    process as process,
    schedules as schedules,
    train as train,
    weighting as weighting,
)


__version__ = importlib.metadata.version("vdmpp")
