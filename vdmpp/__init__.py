"""vdmpp: diffusion objectives in JAX + Equinox (VDM++, samplers, masked diffusion)."""

import importlib.metadata

from . import losses as losses, oracle as oracle, process as process, schedules as schedules, weighting as weighting
from . import data as data, nn as nn
from . import adaptive as adaptive
from . import masked as masked
from . import train as train


__version__ = importlib.metadata.version("vdmpp")
