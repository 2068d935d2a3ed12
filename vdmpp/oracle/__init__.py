"""Bayes-optimal denoisers: finite data sets (Gaussian and masked diffusion) and Gaussian mixtures (THEORY §4, §8)."""

from ._empirical import EmpiricalDenoiser as EmpiricalDenoiser
from ._gmm import GaussianMixture as GaussianMixture
from ._masked import EmpiricalMaskedDenoiser as EmpiricalMaskedDenoiser
