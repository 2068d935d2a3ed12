r"""Noise schedules $\lambda(t)$ (THEORY §2): closed forms, truncation, the adaptive schedule, time samplers."""

from ._adaptive import (
    AdaptiveSchedule as AdaptiveSchedule,
    AdaptiveState as AdaptiveState,
    BoundAdaptiveSchedule as BoundAdaptiveSchedule,
)
from ._base import (
    AbstractNoiseSchedule as AbstractNoiseSchedule,
    AbstractSchedule as AbstractSchedule,
    check_numerics as check_numerics,
    EmptyState as EmptyState,
)
from ._closed_form import (
    Cosine as Cosine,
    EDMSampling as EDMSampling,
    EDMTraining as EDMTraining,
    FlowMatchingOT as FlowMatchingOT,
    LinearLogSNR as LinearLogSNR,
    shift_for_resolution as shift_for_resolution,
    ShiftedCosine as ShiftedCosine,
)
from ._time import (
    AbstractTimeSampler as AbstractTimeSampler,
    IID as IID,
    LowDiscrepancy as LowDiscrepancy,
    Stratified as Stratified,
)
