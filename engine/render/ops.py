"""Small tensor helpers shared by the compositing layers (static shapes, export-friendly)."""

from __future__ import annotations

import torch


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    """0 below 0, 1 above 1, a smooth S between."""
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


def contour_height(contour: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Height y(x) of an x-ordered polyline at columns xs, its slope factor, and whether x lies within it.

    contour: (B, n, 2) points; xs: (W,) column centres. Returns (B, W) heights, (B, W)
    1/sqrt(1 + slope^2) (turns vertical distances into distances to the curve) and (B, W) 0/1.
    Piecewise-linear interpolation written as a sum over segments (hat functions): no gather,
    no data-dependent indexing.
    """
    x0, x1 = contour[:, :-1, 0:1], contour[:, 1:, 0:1]  # (B, n-1, 1)
    y0, y1 = contour[:, :-1, 1:2], contour[:, 1:, 1:2]
    x = xs.view(1, 1, -1)
    span = (x1 - x0).clamp(min=1e-3)
    t = ((x - x0) / span).clamp(0.0, 1.0)
    segment = ((x >= x0) & (x < x1)).to(contour.dtype)  # (B, n-1, W): each segment's support
    slope = (segment * (y1 - y0) / span).sum(1)
    return (segment * (y0 + t * (y1 - y0))).sum(1), torch.rsqrt(1 + slope * slope), segment.sum(1).clamp(max=1.0)


def paste(base: torch.Tensor, patch: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
    """`base` (B, C, H, W) with `patch` written at rows y0.., columns x0.. (static slices and
    concatenations only, so the graph exports without in-place scatter)."""
    h, w = patch.shape[-2:]
    y1, x1 = y0 + h, x0 + w
    row = torch.cat([base[:, :, y0:y1, :x0], patch, base[:, :, y0:y1, x1:]], dim=3)
    return torch.cat([base[:, :, :y0], row, base[:, :, y1:]], dim=2)
