"""vdmpp: diffusion objectives in JAX + Equinox (VDM++, samplers, masked diffusion)."""

import importlib.metadata

from . import (
    adaptive as adaptive,
    analysis as analysis,
    data as data,
    losses as losses,
    masked as masked,
    metrics as metrics,
    nn as nn,
    oracle as oracle,
    process as process,
    samplers as samplers,
    schedules as schedules,
    train as train,
    weighting as weighting,
)


__version__ = importlib.metadata.version("vdmpp")
