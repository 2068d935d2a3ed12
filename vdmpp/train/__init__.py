"""Training: train state, one jitted sharded step, EMA, NaN guard, checkpointing, metrics, the loop."""

from ._checkpoint import Checkpointer as Checkpointer, CheckpointError as CheckpointError
from ._loop import (
    evaluate_bpd as evaluate_bpd,
    fit as fit,
    LoopConfig as LoopConfig,
    NonFiniteLossError as NonFiniteLossError,
)
from ._loss import AbstractLoss as AbstractLoss, GaussianLoss as GaussianLoss
from ._masked_loss import MaskedLoss as MaskedLoss
from ._metrics import (
    atomic_write_bytes as atomic_write_bytes,
    atomic_write_json as atomic_write_json,
    image_grid as image_grid,
    MetricsLogger as MetricsLogger,
    save_figure as save_figure,
    save_png as save_png,
)
from ._sharding import (
    make_mesh as make_mesh,
    replicate_to_host as replicate_to_host,
    Sharding as Sharding,
)
from ._state import (
    AbstractLRSchedule as AbstractLRSchedule,
    init_train_state as init_train_state,
    make_optimizer as make_optimizer,
    train_step as train_step,
    TrainState as TrainState,
    WarmupConstant as WarmupConstant,
    WarmupCosine as WarmupCosine,
)
