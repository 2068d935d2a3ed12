r"""Masked (absorbing) diffusion: schedules, ELBO, reweighted losses, the improved-ELBO cascade, samplers."""

from ._elbo import bits_per_token as bits_per_token, elbo as elbo, elbo_at as elbo_at
from ._process import (
    apply_mask as apply_mask,
    forward as forward,
    masks_from_uniforms as masks_from_uniforms,
    sample_mask as sample_mask,
)
from ._schedules import (
    AbstractMaskingSchedule as AbstractMaskingSchedule,
    CosineSchedule as CosineSchedule,
    GeometricSchedule as GeometricSchedule,
    LinearSchedule as LinearSchedule,
    PolynomialSchedule as PolynomialSchedule,
)
