"""The CNN family's network: a compact classifier whose pooled penultimate features double as the frozen
feature network of the sample-quality metrics.

Three stages of conv-BN-ReLU with widths (w/2, w | 2w, 2w | 4w, 4w), 2x2 max-pooling between stages, the
second conv of stages 2 and 3 residual; global average pooling, dropout, a linear head. At w = 32 a 28x28
image costs about 25 M multiply-adds; it runs channels_last, measured faster on CPU (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Stage(nn.Sequential):
    """conv (cin -> cout) then conv (cout -> cout); the second conv residual when `residual`."""

    def __init__(self, cin: int, cout: int, residual: bool) -> None:
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x)
        return x + self[1](x) if self.residual else self[1](x)


class Classifier(nn.Module):
    def __init__(
        self, channels: int, num_classes: int, width: int, image_size: int, dropout: float, flip_average: bool
    ) -> None:
        super().__init__()
        w = width
        # Larger images are halved once in the stem so the stages see about 28-32 px.
        stem_stride = 2 if image_size > 32 else 1
        self.stem = nn.Sequential(conv_bn_relu(channels, w // 2, stem_stride), conv_bn_relu(w // 2, w))
        self.stage2 = Stage(w, 2 * w, residual=True)
        self.stage3 = Stage(2 * w, 4 * w, residual=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_classes)
        self.flip_average = flip_average  # trained with mirror images: predict on both
        self.num_features = 4 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [-1, 1] -> (B, 4w) pooled penultimate features."""
        x = F.max_pool2d(self.stem(x), 2)
        x = F.max_pool2d(self.stage2(x), 2)
        return self.stage3(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
