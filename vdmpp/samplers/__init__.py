"""Samplers (ancestral, EDM, probability-flow ODE, reverse SDE) and the exact ODE log-likelihood."""

from ._ancestral import ancestral as ancestral
from ._common import Guided as Guided, guided as guided
from ._diffeq import probability_flow as probability_flow, reverse_sde as reverse_sde
from ._edm import edm as edm, edm_gamma as edm_gamma, edm_sigmas as edm_sigmas
from ._likelihood import LikelihoodAux as LikelihoodAux, log_likelihood as log_likelihood
