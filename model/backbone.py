"""VGG16 multi-scale feature extractor in the SSD style, one per modality.

Levels (strides for a 512x640 input): conv4_3 with L2 normalisation (8), fc7 as a dilated convolution (16),
then extra blocks that halve the resolution each (32, 64, 128, 256 for detection).
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs, make_layers

log = logging.getLogger(__name__)

#: The statistics this package normalises inputs with (ImageNet's for RGB; their channel mean for thermal).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
THERMAL_MEAN = 0.449
THERMAL_STD = 0.226

#: Index of the ReLU after conv4_3 in torchvision's VGG16 ``features``; everything up to it is stage 1.
_CONV4_3_END = 23
#: torchvision's pool5 index; SSD replaces it with a 3x3 stride-1 pool.
_POOL5 = 30
#: (bottleneck, output) channels of each extra block at width 1.0 (SSD512's extras).
_EXTRA_CHANNELS: tuple[tuple[int, int], ...] = ((256, 512), (128, 256), (128, 256), (128, 256))


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 8, so tiny test networks still learn)."""
    return max(8, round(channels * width))


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD's conv4_3 normalisation)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.weight.view(1, -1, 1, 1)


class VGG16Extractor(nn.Module):
    """SSD-style VGG16 trunk returning a feature pyramid.

    Args:
        in_channels: 3 for RGB, 1 for thermal.
        width: channel multiplier (1.0 is the paper's network).
        num_extra_levels: extra stride-2 blocks after fc7 (4 for SSD detection, fewer for segmentation).

    Forward: (N, in_channels, H, W) -> list of (N, C_l, H_l, W_l), ``len == 2 + num_extra_levels``,
    with ``H_0 = ceil(H / 8)`` and each next level about half the previous one.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, num_extra_levels: int = 4) -> None:
        super().__init__()
        if not 0 <= num_extra_levels <= len(_EXTRA_CHANNELS):
            raise ValueError(f"num_extra_levels must be in [0, {len(_EXTRA_CHANNELS)}]")
        self.width = width
        self.in_channels = in_channels
        cfg = [c if c == "M" else scaled(int(c), width) for c in cfgs["D"]]
        features = make_layers(cfg)
        for layer in features:
            if isinstance(layer, nn.MaxPool2d):
                layer.ceil_mode = True  # odd sizes (e.g. 480x640 / 8 levels) keep every pixel
        if in_channels != 3:
            first = features[0]
            features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        self.features = features[:_POOL5]  # conv1_1 .. conv5_3 (+ ReLU); keeps torchvision's indices
        c4 = scaled(512, width)
        c7 = scaled(1024, width)
        self.l2norm = L2Norm(c4)
        self.fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(c4, c7, kernel_size=3, padding=6, dilation=6),  # fc6 as a dilated conv
            nn.ReLU(inplace=True),
            nn.Conv2d(c7, c7, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        )
        extras = []
        previous = c7
        for mid, out in _EXTRA_CHANNELS[:num_extra_levels]:
            mid_c, out_c = scaled(mid, width), scaled(out, width)
            extras.append(
                nn.Sequential(
                    nn.Conv2d(previous, mid_c, kernel_size=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(mid_c, out_c, kernel_size=3, stride=2, padding=1),
                    nn.ReLU(inplace=True),
                )
            )
            previous = out_c
        self.extras = nn.ModuleList(extras)
        self.out_channels: list[int] = [c4, c7] + [scaled(o, width) for _, o in _EXTRA_CHANNELS][
            :num_extra_levels
        ]
        self._init_new_layers()

    def _init_new_layers(self) -> None:
        for module in [*self.fc.modules(), *self.extras.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.features[:_CONV4_3_END](x)
        levels = [self.l2norm(x)]
        x = self.features[_CONV4_3_END:](x)
        x = self.fc(x)
        levels.append(x)
        for block in self.extras:
            x = block(x)
            levels.append(x)
        return levels

    def load_imagenet(
        self,
        weights: str | Path | Mapping[str, Tensor],
        *,
        source_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        """Load torchvision's ImageNet VGG16 weights: a state dict, or its file (``vgg16-397923af.pth``).

        conv1_1 of a 1-channel (thermal) trunk gets the sum of the RGB kernels; fc6/fc7 become the dilated
        conv6/conv7 by decimation, as in the original SSD, when the state dict has a usable classifier (the
        ``IMAGENET1K_FEATURES`` weights carry NaN there: fc6/fc7 then keep their random init, as in
        torchvision's SSD). ``source_stats``: the (mean, std) the weights were trained with on [0, 1] inputs
        when they differ from the ImageNet statistics this network normalises with; conv1_1 is rescaled so
        it sees the inputs it was trained on. Only meaningful at width 1.0.
        """
        if self.width != 1.0:
            raise ValueError(f"ImageNet weights need width=1.0, this extractor has width={self.width}")
        if isinstance(weights, Mapping):
            state = dict(weights)
        else:
            state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "features.0.weight" not in state:
            raise ValueError(
                f"{weights if not isinstance(weights, Mapping) else 'the state dict'} is not a "
                "torchvision VGG16 state dict (no 'features.0.weight')"
            )
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        features = {k: v for k, v in features.items() if int(k.split(".")[0]) < _POOL5}
        conv1, bias1 = features["0.weight"].float(), features["0.bias"].float()
        if source_stats is not None:
            conv1, bias1 = _restandardise(conv1, bias1, source_stats, self.in_channels)
        elif self.in_channels != 3:
            conv1 = conv1.sum(dim=1, keepdim=True).repeat(1, self.in_channels, 1, 1) / self.in_channels
        features["0.weight"], features["0.bias"] = conv1, bias1
        self.features.load_state_dict(features)
        fc6_weight = state.get("classifier.0.weight")
        fc7_weight = state.get("classifier.3.weight")
        usable = fc6_weight is not None and fc7_weight is not None
        if usable and torch.isfinite(fc6_weight).all() and torch.isfinite(fc7_weight).all():
            fc6 = fc6_weight.view(4096, 512, 7, 7)
            conv6, conv7 = self.fc[1], self.fc[3]
            conv6.weight.data.copy_(fc6[::4, :, ::3, ::3])
            conv6.bias.data.copy_(state["classifier.0.bias"][::4])
            conv7.weight.data.copy_(fc7_weight[::4, ::4].reshape(1024, 1024, 1, 1))
            conv7.bias.data.copy_(state["classifier.3.bias"][::4])


def _restandardise(
    weight: Tensor, bias: Tensor, source_stats: tuple[Sequence[float], Sequence[float]], in_channels: int
) -> tuple[Tensor, Tensor]:
    """conv1_1 trained on ``(x - M) / S`` rewritten for this network's ``(x - m) / s`` inputs.

    With ``x = s * x_n + m``: ``W' = W * s / S`` and ``b' = b + sum(W * (m - M) / S)`` (exact away from the
    zero padding). A thermal trunk's single channel stands for the three grey channels of the source.
    Shapes: weight (O, 3, k, k), bias (O,) -> (O, in_channels, k, k), (O,).
    """
    source_mean = torch.tensor(source_stats[0], dtype=weight.dtype).view(1, 3, 1, 1)
    source_std = torch.tensor(source_stats[1], dtype=weight.dtype).view(1, 3, 1, 1)
    if in_channels == 3:
        mean = torch.tensor(IMAGENET_MEAN, dtype=weight.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=weight.dtype).view(1, 3, 1, 1)
        return weight * std / source_std, bias + (weight * (mean - source_mean) / source_std).sum((1, 2, 3))
    new_bias = bias + (weight * (THERMAL_MEAN - source_mean) / source_std).sum((1, 2, 3))
    new_weight = (weight * THERMAL_STD / source_std).sum(dim=1, keepdim=True)
    return new_weight.repeat(1, in_channels, 1, 1) / in_channels, new_bias


# ------------------------------------------------------------------------------------------ ImageNet weights
@dataclass(frozen=True)
class ImageNetWeights:
    """A VGG16 state dict ready for :meth:`VGG16Extractor.load_imagenet`, and where it came from."""

    state_dict: Mapping[str, Tensor]
    source: str
    source_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None


#: ``IMAGENET_WEIGHTS=auto`` waits at most this long for download.pytorch.org before giving up.
DOWNLOAD_PROBE_SECONDS = 5.0
_resolved: dict[str, ImageNetWeights | None] = {}
_resolved_lock = threading.Lock()


def _probe(url: str, timeout: float) -> str | None:
    """None when ``url`` answers within ``timeout`` seconds (DNS included), else why not."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                outcome.append(None)
        except Exception as error:  # DNS failure, refused, proxy, TLS...: all mean "cannot download"
            outcome.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=attempt, daemon=True, name="imagenet-probe")
    thread.start()
    thread.join(timeout)  # getaddrinfo ignores socket timeouts: the join bounds the whole probe
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def _source_stats(weights: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    keywords = getattr(weights.transforms, "keywords", {}) or {}
    mean, std = tuple(keywords.get("mean", IMAGENET_MEAN)), tuple(keywords.get("std", IMAGENET_STD))
    if np.allclose(mean, IMAGENET_MEAN) and np.allclose(std, IMAGENET_STD):
        return None
    return mean, std


def _download_imagenet(timeout: float) -> ImageNetWeights | None:
    """torchvision's ``VGG16_Weights.IMAGENET1K_FEATURES`` (the weights torchvision's SSD starts from), from
    the torch hub cache or downloaded into it; None (after one warning) when it cannot be had."""
    weights = VGG16_Weights.IMAGENET1K_FEATURES
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(weights.url).path).name
    if not cached.exists():
        problem = _probe(weights.url, timeout)
        if problem is not None:
            log.warning(
                "IMAGENET_WEIGHTS=auto: cannot download %s (%s); new models start from random init. Put the "
                "file at %s, or set IMAGENET_WEIGHTS to a local VGG16 state dict, or to 'none' to silence "
                "this warning",
                weights.url,
                problem,
                cached,
            )
            return None
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # a broken download or cache file: warn once, go on from random init
        log.warning("IMAGENET_WEIGHTS=auto: cannot load %s (%s); random init", weights.url, error)
        return None
    return ImageNetWeights(state, f"torchvision {weights}", _source_stats(weights))


def resolve_imagenet_weights(
    setting: str | Path | None, *, timeout: float = DOWNLOAD_PROBE_SECONDS
) -> ImageNetWeights | None:
    """What ``IMAGENET_WEIGHTS`` names: ``auto`` (torchvision's weights API: the hub cache, else a download
    bounded by ``timeout``; random init with one warning when offline), ``none`` / empty (random init), or a
    path to a torchvision VGG16 state dict. Resolved once per process and value (the state dict is kept).

    Raises ValueError for a path that is missing or not a VGG16 state dict.
    """
    key = str(setting or "none").strip()
    with _resolved_lock:
        if key in _resolved:
            return _resolved[key]
        if key.lower() in ("none", "", "random"):
            resolved = None
        elif key.lower() == "auto":
            resolved = _download_imagenet(timeout)
        else:
            path = Path(key).expanduser()
            if not path.is_file():
                raise ValueError(f"IMAGENET_WEIGHTS={key!r}: no such file")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "features.0.weight" not in state:
                raise ValueError(f"IMAGENET_WEIGHTS={key!r} is not a torchvision VGG16 state dict")
            # The features-only release (amdegroot's, NaN classifier) was trained on 0..255 inputs.
            classifier = state.get("classifier.0.weight")
            features_only = classifier is not None and not bool(torch.isfinite(classifier).all())
            stats = _source_stats(VGG16_Weights.IMAGENET1K_FEATURES) if features_only else None
            resolved = ImageNetWeights(state, str(path), stats)
        _resolved[key] = resolved
        return resolved
