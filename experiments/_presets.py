"""The papers' models as presets: network + the run hyperparameters of the published configs (not a script).

One place maps a preset name to objects (DESIGN: the CLI maps names to objects in one place):

    from experiments._presets import get_preset
    p = get_preset("vdm_cifar10")
    model = p.build(jr.key(0), precision=vd.nn.Precision(jnp.bfloat16), remat=True)
    p.num_parameters()          # from jax.eval_shape: nothing is allocated

Each preset has a reduced-width `<name>_tiny` variant (same network class and options, a few thousand
parameters) that runs in seconds on a CPU, on data the tests have: scikit-learn digits (8×8×1, 17 levels)
for the image models, text8's 27-character alphabet in sequences of 16 for the text model. The reference
for every number is in `reference`; parameter counts were checked against the published code's layer
shapes (see tests/test_presets.py).

- `vdm_cifar10`: `vd.nn.UNet`, 32 residual blocks of 128 channels, no downsampling, Fourier features
  (google-research/vdm `configs/cifar10.py`);
- `md4_text8`: `vd.nn.DiT`, 12 blocks of width 768, 12 heads, gated MLP, adaLN-zero, depth-scaled init
  (google-deepmind/md4 `md4/configs/md4/text8.py`);
- `md4_imagenet64`: `vd.nn.UViT`, 8 + 9 residual blocks of 256 channels around 20 DiT blocks of width 768
  (md4 `md4/configs/md4/imagenet64.py`; Shi & Titsias' 204M model).
"""

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal

import equinox as eqx
import jax.random as jr
import vdmpp as vd


@dataclasses.dataclass(frozen=True, eq=False)
class Preset:
    """A published model: how to build its network and the hyperparameters its config trains it with.

    Attributes:
        name: registry name.
        kind: "gaussian" (train_gaussian.py) or "masked" (train_masked.py).
        network: the vdmpp network class; `network_kwargs` its arguments (without key/precision/remat).
        data_shape: shape of one example the config trains on; `num_levels`: levels per value (vocabulary V).
        schedule: the noise (Gaussian) or masking schedule object; `weighting`: the Gaussian weighting or None.
        lr, lr_schedule, warmup, steps, batch_size, b1, b2, eps, weight_decay, grad_clip, ema_decay: the
            optimiser and run settings of the config (AdamW; `grad_clip` None: no clipping).
        reference: where the numbers come from; `reference_params`: the published model's parameter count
            (computed from the public code's layer shapes where the paper gives none; see the tests).
        cli: the training script's own `Config` fields that name `schedule` and `weighting` (the script maps
            names to objects; tests/test_presets.py checks that they build these objects).
    """

    name: str
    kind: Literal["gaussian", "masked"]
    network: Any  # a vdmpp.nn network class
    network_kwargs: Mapping[str, Any]
    data_shape: tuple[int, ...]
    num_levels: int
    schedule: Any
    weighting: Any
    lr: float
    lr_schedule: Literal["constant", "cosine"]
    warmup: int
    steps: int
    batch_size: int
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip: float | None
    ema_decay: float
    reference: str
    reference_params: int
    cli: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    def build(self, key, *, precision: vd.nn.Precision = vd.nn.Precision(), remat: bool = False, **overrides):
        """The network, initialised from `key`, computing under `precision`, optionally rematerialised.

        `overrides` replace network arguments (the training scripts pass the run's λ range and dropout).
        """
        kwargs = {**self.network_kwargs, **overrides}
        return self.network(**kwargs, key=key, precision=precision, remat=remat)

    def abstract(self):
        """The network as `jax.ShapeDtypeStruct` leaves (`eqx.filter_eval_shape`): nothing allocated."""
        return eqx.filter_eval_shape(self.build, jr.key(0))

    def num_parameters(self) -> int:
        """Parameter count from `jax.eval_shape` (nothing allocated)."""
        return vd.nn.num_parameters(self.abstract())

    @property
    def dropout(self) -> float:
        """The network's dropout rate."""
        return float(self.network_kwargs.get("dropout", 0.0))

    def run_overrides(self) -> dict[str, Any]:
        """The training script's `Config` fields this preset sets (filled where the user left the default)."""
        fields = ("lr", "lr_schedule", "warmup", "steps", "batch_size", "ema_decay", "weight_decay", "dropout")
        out = {f: getattr(self, f) for f in fields}
        out.update(adam_b2=self.b2, grad_clip=self.grad_clip, **self.cli)
        return out


def _frozen(**kwargs) -> Mapping[str, Any]:
    return types.MappingProxyType(kwargs)


_VDM_CIFAR10 = Preset(
    name="vdm_cifar10",
    kind="gaussian",
    network=vd.nn.UNet,
    network_kwargs=_frozen(
        channels=3,
        base_channels=128,
        channel_mults=(1,),  # no downsampling
        num_res_blocks=32,
        attention_levels=(),  # with_attention=False; the middle block keeps its one attention layer
        num_heads=1,
        num_groups=32,
        dropout=0.1,
        lam_min=-5.0,  # gamma_max = 5.0
        lam_max=13.3,  # gamma_min = -13.3
        fourier_features=(6, 8),
        scale_shift=False,
    ),
    data_shape=(32, 32, 3),
    num_levels=256,
    # VDM learns the end points of a linear gamma; this is its initial (and nearly final) schedule
    schedule=vd.schedules.LinearLogSNR(lam_min=-5.0, lam_max=13.3),
    weighting=vd.weighting.ELBO(),
    lr=2e-4,
    lr_schedule="constant",
    warmup=100,
    steps=10_000_000,
    batch_size=128,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.01,
    grad_clip=None,
    ema_decay=0.9999,
    reference="google-research/vdm@dc27b98 configs/cifar10.py, model_vdm.py ScoreUNet; VDM paper 2.65 bits/dim",
    reference_params=30_578_179,
    cli=_frozen(weighting="elbo", schedule="linear", lam_min=-5.0, lam_max=13.3),
)

_MD4_TEXT8 = Preset(
    name="md4_text8",
    kind="masked",
    network=vd.nn.DiT,
    network_kwargs=_frozen(
        vocab_size=27,
        seq_len=256,
        dim=768,  # feature_dim 64 x num_heads 12
        depth=12,
        num_heads=12,
        embed_dim=64,  # outside_embed: tokens embedded in feature_dim, then projected
        cond_dim=64,
        glu=True,
        depth_scaled_init=True,
        lam_min=-9.22,  # alpha in [1e-4, 1 - 1e-4] (MD4's eps): |lambda| <= log(9999)
        lam_max=9.22,
        dropout=0.0,
    ),
    data_shape=(256,),
    num_levels=27,
    schedule=vd.masked.LinearSchedule(),
    weighting=None,
    lr=3e-4,
    lr_schedule="cosine",
    warmup=2000,
    steps=1_000_000,
    batch_size=512,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    grad_clip=None,
    ema_decay=0.9999,
    reference="google-deepmind/md4@b9fbf29 md4/configs/md4/text8.py, md4/networks/transformer.py",
    reference_params=88_734_272,
    cli=_frozen(schedule="linear", weighting="elbo"),
)

_MD4_IMAGENET64 = Preset(
    name="md4_imagenet64",
    kind="masked",
    network=vd.nn.UViT,
    network_kwargs=_frozen(
        vocab_size=256,
        image_shape=(64, 64, 3),
        features=256,
        num_res_blocks=8,
        dit_depth=20,
        dit_dim=768,
        dit_heads=12,
        patch_size=2,
        mlp_ratio=4,
        num_groups=32,
        lam_min=-9.22,
        lam_max=9.22,
        num_classes=1000,  # S&T's table is class-conditional ImageNet 64x64
        dropout=0.1,
    ),
    data_shape=(64, 64, 3),
    num_levels=256,
    schedule=vd.masked.LinearSchedule(),
    weighting=None,
    lr=2e-4,
    lr_schedule="cosine",
    warmup=100,
    steps=2_000_000,
    batch_size=512,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.01,
    grad_clip=None,
    ema_decay=0.9999,
    reference="Shi & Titsias 2025, ImageNet 64x64 table (204M); google-deepmind/md4@b9fbf29 "
    "md4/configs/md4/imagenet64.py, md4/networks/uvit.py, dit.py",
    reference_params=204_000_000,
    cli=_frozen(schedule="linear", weighting="elbo"),
)


def _tiny(preset: Preset, data_shape: tuple[int, ...], num_levels: int, **network_kwargs) -> Preset:
    """A reduced-width variant on data that ship with the tests: digits (8x8x1, 17 levels) or a text file."""
    return dataclasses.replace(
        preset,
        name=preset.name + "_tiny",
        network_kwargs=_frozen(**{**preset.network_kwargs, **network_kwargs}),
        data_shape=data_shape,
        num_levels=num_levels,
        batch_size=8,  # divisible by the 8 fake CPU devices of the tests
        steps=2,
        warmup=1,
        reference=f"reduced width of {preset.name}",
        reference_params=0,
    )


PRESETS: Mapping[str, Preset] = types.MappingProxyType(
    {
        p.name: p
        for p in (
            _VDM_CIFAR10,
            # scikit-learn digits: 8x8x1 images with 17 levels (10 classes)
            _tiny(_VDM_CIFAR10, (8, 8, 1), 17, channels=1, base_channels=8, num_res_blocks=1, num_groups=4),
            _MD4_TEXT8,
            # text8's alphabet (a-z and space) in sequences of 16
            _tiny(_MD4_TEXT8, (16,), 27, seq_len=16, dim=16, depth=2, num_heads=2, embed_dim=8, cond_dim=8),
            _MD4_IMAGENET64,
            _tiny(
                _MD4_IMAGENET64,
                (8, 8, 1),
                17,
                image_shape=(8, 8, 1),
                vocab_size=17,
                features=8,
                num_res_blocks=1,
                dit_depth=1,
                dit_dim=16,
                dit_heads=2,
                num_groups=4,
                num_classes=10,
            ),
        )
    }
)
"""Every preset by name: the published models and their `_tiny` variants."""


def get_preset(name: str) -> Preset:
    """The preset called `name`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)} (experiments/_presets.py).")
    return PRESETS[name]
