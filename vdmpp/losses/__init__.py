"""Losses: the weighted loss (K&G eq. 5–7), the discrete-time loss, the ELBO in bits/dim, the Gaussian cascade."""

from ..schedules import (
    AbstractTimeSampler as AbstractTimeSampler,
    IID as IID,
    LowDiscrepancy as LowDiscrepancy,
    Stratified as Stratified,
)
from ._cascade import (
    CascadeTerms as CascadeTerms,
    gaussian_cascade as gaussian_cascade,
    gaussian_cascade_terms_at as gaussian_cascade_terms_at,
)
from ._discrete import discrete_loss as discrete_loss, discrete_loss_at as discrete_loss_at
from ._elbo import (
    decoder_logits as decoder_logits,
    elbo_bpd as elbo_bpd,
    elbo_terms as elbo_terms,
    ElboTerms as ElboTerms,
    prior_kl as prior_kl,
    reconstruction_nll as reconstruction_nll,
    uint8_to_float as uint8_to_float,
)
from ._weighted import (
    weighted_loss as weighted_loss,
    weighted_loss_at as weighted_loss_at,
    WeightedLossAux as WeightedLossAux,
)
