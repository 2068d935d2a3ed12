r"""A U-Net denoiser for masked diffusion on token images: embedded tokens in, logits per pixel out."""

import equinox as eqx

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray
from ._embed import check_tokens
from ._layers import Embedding, init_rng, sub_key
from ._precision import AbstractNetwork, Precision
from ._unet import UNet


class TokenUNet(AbstractNetwork):
    r"""[`vdmpp.nn.UNet`][] on an H×W×C grid of tokens: `model(tokens, lam, *, key=None, inference=False)`.

    Each of the V + 1 symbols (mask id V included) has a learned `embed_dim`-vector; the C channels' vectors
    are stacked into an H×W×(C·embed_dim) image for the U-Net, whose zero-initialised output convolution gives
    V logits per channel (an untrained model predicts the uniform distribution). The same masked-diffusion
    denoiser signature as [`vdmpp.nn.Transformer`][] — logits of shape `(H, W, C, V)` — at the cost of
    convolutions: on 8×8 digits about a quarter of the Transformer's CPU time per step
    (docs/howto/demo_models.md). Conditioned on $\lambda$ like the U-Net (MD4 finds it unnecessary, harmless).

    Args:
        vocab_size: V, the number of real tokens (the mask id is V).
        image_shape: `(H, W, C)` of one token image.
        embed_dim: width of each token's embedding.
        key: initialisation key.
        precision: compute dtype policy ([`vdmpp.nn.Precision`][]); the logits are float32.
        remat: rematerialise each residual block in the backward pass.
        **unet_kwargs: the U-Net's sizes (`base_channels`, `channel_mults`, `num_res_blocks`,
            `attention_levels`, `num_heads`, `num_groups`, `dropout`, `lam_min`, `lam_max`, ...).
    """

    vocab_size: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    token_embed: Embedding
    unet: UNet

    def __init__(
        self,
        vocab_size: int,
        image_shape: tuple[int, int, int],
        *,
        embed_dim: int = 16,
        key: PRNGKeyArray,
        precision: Precision = Precision(),
        remat: bool = False,
        **unet_kwargs,
    ):
        check_positive_int(vocab_size, "vocab_size")
        check_positive_int(embed_dim, "embed_dim")
        if len(image_shape) != 3 or any(not isinstance(n, int) or n < 1 for n in image_shape):
            raise ValueError(
                f"`image_shape` must be (H, W, C) positive ints, e.g. (8, 8, 1) for digits; got {image_shape!r}."
            )
        rng = init_rng(key)
        channels = image_shape[-1]
        self.vocab_size = int(vocab_size)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
        self.token_embed = Embedding(vocab_size + 1, embed_dim, scale=1.0, key=sub_key(rng))
        self.unet = UNet(
            channels * embed_dim,
            out_channels=channels * vocab_size,
            key=sub_key(rng),
            precision=precision,
            remat=remat,
            **unet_kwargs,
        )

    @property
    def precision(self) -> Precision:  # pyright: ignore[reportIncompatibleVariableOverride]
        """The U-Net's compute dtype policy."""
        return self.unet.precision

    @property
    def remat(self) -> bool:  # pyright: ignore[reportIncompatibleVariableOverride]
        """Whether the U-Net rematerialises its blocks."""
        return self.unet.remat

    @property
    def mask_id(self) -> int:
        """The mask token id, V."""
        return self.vocab_size

    def with_precision(self, precision: Precision) -> "TokenUNet":
        """The same network (same parameters) computing under `precision`."""
        return eqx.tree_at(lambda m: m.unet, self, self.unet.with_precision(precision))

    def __call__(
        self,
        tokens: Int[Array, "H W C"],
        lam: FloatScalarLike,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool = False,
    ) -> Float[Array, "H W C V"]:
        """Logits over the V real tokens at every pixel and channel of one token image."""
        tokens = check_tokens(tokens, self.vocab_size, shape=self.image_shape)
        h, w, c = self.image_shape
        x = self.token_embed(tokens).reshape(h, w, -1)
        logits = self.unet(x, lam, key=key, inference=inference)
        return logits.reshape(h, w, c, self.vocab_size)
