"""VGG16 multi-scale feature extractor in the SSD style, one per modality.

Levels (strides for a 512x640 input): conv4_3 with L2 normalisation (8), fc7 as a dilated convolution (16),
then extra blocks that halve the resolution each (32, 64, 128, 256 for detection).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

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

    def load_imagenet(self, path: str | Path) -> None:
        """Load torchvision's ImageNet VGG16 weights (``vgg16-397923af.pth`` style state dict) from disk.

        conv1_1 of a 1-channel (thermal) trunk gets the sum of the RGB kernels; fc6/fc7 become the dilated
        conv6/conv7 by decimation, as in the original SSD. Only meaningful at width 1.0.
        """
        if self.width != 1.0:
            raise ValueError(f"ImageNet weights need width=1.0, this extractor has width={self.width}")
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if "features.0.weight" not in state:
            raise ValueError(f"{path} is not a torchvision VGG16 state dict (no 'features.0.weight')")
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        features = {k: v for k, v in features.items() if int(k.split(".")[0]) < _POOL5}
        if self.in_channels != 3:
            conv1 = features["0.weight"]
            features["0.weight"] = conv1.sum(dim=1, keepdim=True).repeat(1, self.in_channels, 1, 1) / (
                self.in_channels
            )
        self.features.load_state_dict(features)
        if "classifier.0.weight" in state and "classifier.3.weight" in state:
            fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
            conv6, conv7 = self.fc[1], self.fc[3]
            conv6.weight.data.copy_(fc6[::4, :, ::3, ::3])
            conv6.bias.data.copy_(state["classifier.0.bias"][::4])
            conv7.weight.data.copy_(state["classifier.3.weight"][::4, ::4].reshape(1024, 1024, 1, 1))
            conv7.bias.data.copy_(state["classifier.3.bias"][::4])
