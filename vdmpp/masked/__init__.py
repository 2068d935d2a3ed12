r"""Masked (absorbing) diffusion: schedules, ELBO, reweighted losses, the improved-ELBO cascade, samplers."""

from ._cascade import (
    cascade as cascade,
    cascade_terms as cascade_terms,
    cascade_terms_at as cascade_terms_at,
    weighted_cascade as weighted_cascade,
)
from ._elbo import bits_per_token as bits_per_token, elbo as elbo, elbo_at as elbo_at
from ._guidance import Guided as Guided, guided as guided
from ._process import (
    apply_mask as apply_mask,
    forward as forward,
    masks_from_uniforms as masks_from_uniforms,
    sample_mask as sample_mask,
)
from ._remask import (
    AbstractRemasking as AbstractRemasking,
    RemaskCap as RemaskCap,
    RemaskConfidence as RemaskConfidence,
    RemaskLoop as RemaskLoop,
    RemaskRescale as RemaskRescale,
    ReMDM as ReMDM,
)
from ._reweighted import (
    reweighted_loss as reweighted_loss,
    reweighted_loss_at as reweighted_loss_at,
    Simple as Simple,
    tilde_weight as tilde_weight,
)
from ._samplers import (
    AbstractMaskedSampler as AbstractMaskedSampler,
    Ancestral as Ancestral,
    FirstHitting as FirstHitting,
    MaskGIT as MaskGIT,
    sample as sample,
    SemiAutoregressive as SemiAutoregressive,
)
from ._sampling import (
    AbstractTimeGrid as AbstractTimeGrid,
    Condition as Condition,
    CosineGridFineAtData as CosineGridFineAtData,
    CosineGridFineAtNoise as CosineGridFineAtNoise,
    ExplicitGrid as ExplicitGrid,
    top_p_filter as top_p_filter,
    UniformGrid as UniformGrid,
)
from ._sampling_functions import ancestral as ancestral, any_order_autoregressive as any_order_autoregressive
from ._schedules import (
    AbstractMaskingSchedule as AbstractMaskingSchedule,
    CosineSchedule as CosineSchedule,
    GeometricSchedule as GeometricSchedule,
    LinearSchedule as LinearSchedule,
    PolynomialSchedule as PolynomialSchedule,
)
