"""Samplers for Gaussian diffusion: strategies (`AbstractSampler`) run by `sample`, grids, guidance, likelihood."""

from ._ancestral import Ancestral as Ancestral, ancestral as ancestral
from ._common import (
    AbstractCountedDenoiser as AbstractCountedDenoiser,
    AbstractGuidance as AbstractGuidance,
    calls_per_eval as calls_per_eval,
    Guided as Guided,
    guided as guided,
)
from ._diffeq import (
    probability_flow as probability_flow,
    ProbabilityFlow as ProbabilityFlow,
    reverse_sde as reverse_sde,
    ReverseSDE as ReverseSDE,
)
from ._edm import EDM as EDM, edm as edm, edm_gamma as edm_gamma, edm_sigmas as edm_sigmas
from ._exponential import DDIM as DDIM, DPMSolverPP as DPMSolverPP, phi_2 as phi_2, phi_3 as phi_3
from ._grids import (
    AbstractGrid as AbstractGrid,
    EDMGrid as EDMGrid,
    ExplicitGrid as ExplicitGrid,
    UniformLogSNR as UniformLogSNR,
    UniformTime as UniformTime,
)
from ._likelihood import LikelihoodAux as LikelihoodAux, log_likelihood as log_likelihood
from ._sample import AbstractSampler as AbstractSampler, sample as sample
