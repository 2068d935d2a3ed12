"""Networks (Equinox, one example at a time): MLP, U-Net, transformers; conditioned on the log-SNR λ."""

from ._classifier import Classifier as Classifier
from ._denoiser import as_denoiser as as_denoiser, ModelDenoiser as ModelDenoiser
from ._dit import DiT as DiT
from ._embed import ClassEmbedding as ClassEmbedding, LamEmbedding as LamEmbedding
from ._mlp import MLP as MLP
from ._params import num_parameters as num_parameters
from ._precision import AbstractNetwork as AbstractNetwork, Precision as Precision
from ._token_unet import TokenUNet as TokenUNet
from ._transformer import Transformer as Transformer
from ._unet import UNet as UNet
from ._uvit import UViT as UViT
