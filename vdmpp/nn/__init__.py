"""Networks (Equinox, one example at a time): MLP, U-Net, transformer; conditioned on the log-SNR λ."""

from ._classifier import Classifier as Classifier
from ._denoiser import as_denoiser as as_denoiser, ModelDenoiser as ModelDenoiser
from ._embed import ClassEmbedding as ClassEmbedding, LamEmbedding as LamEmbedding
from ._mlp import MLP as MLP
from ._transformer import Transformer as Transformer
from ._unet import UNet as UNet
