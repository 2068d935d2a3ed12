"""Training: train state, one jitted sharded step, EMA, NaN guard, checkpointing, metrics, the loop."""

from ._checkpoint import Checkpointer as Checkpointer, CheckpointError as CheckpointError
from ._loss import AbstractLoss as AbstractLoss, GaussianLoss as GaussianLoss
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
