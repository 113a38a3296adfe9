"""Neural surrogate of the Fisher-Kolmogorov solver (Weidner et al. 2025): one import for its parts.

* ``bodil.forward.network``: the ConvNeXt U-Net ``(theta, c_w, c_g) -> u`` and the inverse encoder
  ``(u, c_w, c_g) -> theta``, their layers, ``Architecture``, ``build`` and ``theta_channels``;
* ``bodil.forward.model``: ``Surrogate`` (a trained network with its parameter box: ``predict``, ``invert``,
  ``normalise``, ``save``), ``load`` and ``pretrained`` (the weights shipped in ``bodil/forward/weights/``);
* ``bodil.forward.training``: ``TrainSettings`` and ``train_surrogate``.

``from bodil.forward import surrogate`` gives all of them, for example ``surrogate.pretrained().predict(theta,
tissue)``.
"""

from .model import FORMAT, WEIGHTS_DIR, Surrogate, load, pretrained, to_unit
from .network import (KINDS, SEED_DT2, SEED_MASS, THETA_CHANNELS, TISSUE_THRESHOLD, Architecture, ChannelNorm,
                      ConvNeXtBlock, Down, ForwardSurrogate, InverseEncoder, Pointwise, Up, build, depthwise_conv3d,
                      linearised_log_concentration, theta_channels)
from .training import TrainSettings, train_surrogate

__all__ = ["Architecture", "ChannelNorm", "ConvNeXtBlock", "Down", "FORMAT", "ForwardSurrogate", "InverseEncoder",
           "KINDS", "Pointwise", "SEED_DT2", "SEED_MASS", "Surrogate", "THETA_CHANNELS", "TISSUE_THRESHOLD",
           "TrainSettings", "Up", "WEIGHTS_DIR", "build", "depthwise_conv3d", "linearised_log_concentration", "load",
           "pretrained", "theta_channels", "to_unit", "train_surrogate"]
