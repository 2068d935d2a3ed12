"""Training: objectives, the optimiser, one jitted donated step, sharding, EMA, checkpoints, metrics, the loop."""

from .._io import atomic_write_bytes as atomic_write_bytes, atomic_write_json as atomic_write_json
from ._checkpoint import (
    Checkpointer as Checkpointer,
    CheckpointError as CheckpointError,
    config_differences as config_differences,
)
from ._evaluate import evaluate_bpd as evaluate_bpd
from ._gaussian import GaussianLoss as GaussianLoss
from ._loop import (
    fit as fit,
    LoopConfig as LoopConfig,
    NonFiniteLossError as NonFiniteLossError,
)
from ._masked import MaskedLoss as MaskedLoss
from ._metrics import (
    image_grid as image_grid,
    MetricsLogger as MetricsLogger,
    save_figure as save_figure,
    save_png as save_png,
)
from ._objective import AbstractLoss as AbstractLoss
from ._optim import (
    AbstractLRSchedule as AbstractLRSchedule,
    make_optimizer as make_optimizer,
    WarmupConstant as WarmupConstant,
    WarmupCosine as WarmupCosine,
)
from ._posthoc import (
    gamma_to_sigma_rel as gamma_to_sigma_rel,
    posthoc_coefficients as posthoc_coefficients,
    PostHocEMA as PostHocEMA,
    profile_inner_product as profile_inner_product,
    sigma_rel_to_gamma as sigma_rel_to_gamma,
)
from ._sample_eval import SampleEvaluation as SampleEvaluation
from ._sharding import (
    make_mesh as make_mesh,
    replicate_to_host as replicate_to_host,
    Sharding as Sharding,
)
from ._snapshots import (
    EMASnapshot as EMASnapshot,
    load_ema_snapshots as load_ema_snapshots,
    reconstruct_ema as reconstruct_ema,
    save_ema_snapshot as save_ema_snapshot,
)
from ._step import (
    init_train_state as init_train_state,
    make_train_step as make_train_step,
    TrainState as TrainState,
    TrainStep as TrainStep,
)
from ._workdir import (
    claim_workdir as claim_workdir,
    RUN_OUTPUTS as RUN_OUTPUTS,
    WorkdirError as WorkdirError,
    WorkdirLock as WorkdirLock,
)
