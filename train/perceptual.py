"""LPIPS perceptual distance (VGG16 variant) from weights the user has on disk; never downloaded.

Two local files are needed: torchvision's VGG16 ImageNet state dict (keys `features.N.weight`)
and the LPIPS linear-layer weights for VGG (keys `linK.model.1.weight`, K = 0..4). Both are read
with torch.load(weights_only=True) or safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gsq_core.errors import ConfigError

# VGG16 convolution widths; "M" is a 2x2 max-pool. Same layer order as torchvision's vgg16().features.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices (in the feature stack) of the ReLUs LPIPS compares: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_WIDTHS = (64, 128, 256, 512, 512)
# ImageNet mean/std, re-expressed for images in [-1, 1]: shift = 2*mean - 1, scale = 2*std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: LPIPS weight file not found (LPIPS weights are never downloaded; give a local file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # many error types for damaged files
        raise ConfigError(f"{path}: cannot read LPIPS weights safely: {str(error).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return state


class LPIPS(nn.Module):
    """Learned perceptual distance between image batches in [-1, 1]; returns the batch mean."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers[: LPIPS_TAPS[-1] + 1])
        self.linear = nn.ModuleList(nn.Conv2d(width, 1, 1, bias=False) for width in LPIPS_WIDTHS)
        self.register_buffer("shift", torch.tensor([2 * m - 1 for m in IMAGENET_MEAN]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([2 * s for s in IMAGENET_STD]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, vgg_path: str | Path, linear_path: str | Path) -> "LPIPS":
        """Build from local torchvision VGG16 and LPIPS linear weights."""
        model = cls()
        vgg = _read_tensors(vgg_path)
        features = {}
        for key, value in vgg.items():
            name = key.removeprefix("features.")
            index = int(name.split(".")[0]) if name.split(".")[0].isdigit() else -1
            if 0 <= index <= LPIPS_TAPS[-1]:
                features[name] = value
        linear = {}
        for key, value in _read_tensors(linear_path).items():
            head = key.removeprefix("lins.").split(".")[0].removeprefix("lin")
            if head.isdigit():
                linear[f"{int(head)}.weight"] = value
        try:
            model.features.load_state_dict(features)
            model.linear.load_state_dict(linear)
        except RuntimeError as error:
            raise ConfigError(f"LPIPS weights do not match VGG16/LPIPS layouts: {str(error).splitlines()[0]}") from None
        return model.eval()

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = (images - self.shift) / self.scale
        y = (targets - self.shift) / self.scale
        total = images.new_zeros(())
        tap = 0
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index == LPIPS_TAPS[tap]:
                fx = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                fy = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                total = total + self.linear[tap]((fx - fy).pow(2)).mean()
                tap += 1
        return total
