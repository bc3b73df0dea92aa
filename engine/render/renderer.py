"""The renderer: (B, D) motion coefficients -> (B, 3, S, S) frames, as one small tensor program.

Per frame, with every avatar-specific field precomputed as a buffer (engine.render.warp):
  1. head flow H = head coeffs @ head basis and expression flow E = blendshapes @ expression
     basis, both coarse (flow_size^2; the expression basis kept only on the box where it is
     non-zero), each one matmul;
  2. compose them as the rig poses points (expression first, then head): the pixel p shows
     the rest image at q + E(q), q = p + H(p), so E is sampled at q (a 2-channel grid_sample);
  3. upsample the coarse field with the identity folded in (bilinear upsampling of the affine
     identity is exact), so it is the sampling grid itself, with no full-resolution add;
  4. where the expression flow jumps (parted lips, closing lids) it is stored at full
     resolution in a box around them, composed the same way and added to that box's grid;
  5. 4-D grid_samples of the rest image: the box with its detailed grid, the rest of the frame
     in four pieces around it; on the box, the mouth interior where the lips part and the
     eyelids' repainted skin where a lid came down; one concatenation assembles the frame.
No loops over pixels or triangles, no data-dependent control flow, static shapes: the module
traces and exports as it is. Composing (rather than adding) the two flows keeps a parted lip
where the head carried it: a summed flow would leave the jaw's edge at its rest position.
The mouth ROI and the detail box cover the lips and lids for every blendshape at its extreme
and head pose within HEAD_ENVELOPE of its range; beyond that the interior is clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.motion import spec
from engine.render.eyes import LASH_BAND, LID_BAND, LOWER_BAND, Eyelid, band_colour
from engine.render.lips import LipColours, clean_lip_line
from engine.render.mouth import MouthInterior, palette
from engine.render.ops import paste
from engine.render.warp import FlowRasterizer, fit_detail_residual, fit_flow_basis, rest_image

MOUTH_MARGIN = 6  # px around the furthest the inner lips can reach (the wet rim lies below the lower one)
EYE_MARGIN = 3  # px around the furthest the eyelids can reach
HEAD_ENVELOPE = 0.35  # fraction of the head-pose range the mouth ROI and detail box allow for
COARSE_FACTOR = 4  # frame size / default coarse flow size
SKIN_LUMA = 0.6  # the palette's reference skin brightness


class Renderer(nn.Module):
    """Warp renderer for one avatar: `forward(coeffs (B, D) raw float32) -> (B, 3, S, S) in [0, 1]`.

    rig: an engine.face.rig.Rig (or anything with its attributes). flow_size: resolution of
    the coarse flow, a divisor of the frame size (default: a quarter of it; the lips and eyes
    get full resolution anyway).
    bounds: (D,) low and high of each coefficient; head: indices of the head-pose
    coefficients. Both default to engine.motion.spec's.
    """

    @classmethod
    def from_photo(cls, photo, size: int = 512, device: str | torch.device = "cpu") -> Renderer:
        """The renderer of the face in a photo (path or RGB array), framed at `size` px, in eval mode on
        `device`. PortraitError (a UserError) says what to fix when the photo has no usable face."""
        from engine.face.analysis import analyze_portrait  # mediapipe: imported only when a photo is analysed
        from engine.face.rig import Rig

        return cls(Rig(analyze_portrait(photo, size=size))).eval().to(device)

    def __init__(self, rig, flow_size: int | None = None, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                 head: Sequence[int] | None = None):
        super().__init__()
        size, dims = rig.image.shape[0], rig.basis.shape[0]
        flow_size = size // COARSE_FACTOR if flow_size is None else flow_size
        if rig.image.shape != (size, size, 3) or size % flow_size:
            raise ValueError(f"the rig's image must be (S, S, 3) with S a multiple of flow_size={flow_size}, "
                             f"got {rig.image.shape}; pick flow_size among the divisors of {size} (e.g. {size // 4})")
        bounds = (spec.LOW, spec.HIGH) if bounds is None else bounds
        if len(bounds[0]) != dims:
            raise ValueError(f"the rig has {dims} coefficients but bounds give {len(bounds[0])}; "
                             "pass bounds=(low, high) matching the rig's basis")
        if head is None:
            head = [spec.index(n) for n in spec.HEAD] if dims == spec.D else []
        is_head = np.isin(np.arange(dims), head)
        expr_idx, head_idx = np.flatnonzero(~is_head), np.flatnonzero(is_head)
        self.size, self.flow_size, self.factor = size, flow_size, size // flow_size
        self.register_buffer("expr_index", torch.as_tensor(expr_idx, dtype=torch.long))
        self.register_buffer("head_index", torch.as_tensor(head_idx, dtype=torch.long))
        image = rest_image(rig)
        colours = LipColours.of(image, rig)
        image = clean_lip_line(image, rig, colours)  # what the photo's parted lips left along the closed line
        self.image_rgba = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)  # (S, S, 4) uint8: what `frames` samples on CPU
        self.register_buffer("image", torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)  # (1, 3, S, S)

        # mouthClose is defined on an open jaw (ARKit): its flow is what it adds to jawOpen
        context = {spec.index("mouthClose"): spec.index("jawOpen")} if dims == spec.D else {}
        coarse = FlowRasterizer(rig, flow_size)
        for name, idx in (("expr_basis", expr_idx), ("head_basis", head_idx)):
            basis = fit_flow_basis(coarse, bounds, idx, context).reshape(len(idx), flow_size, flow_size, 2)
            self.register_buffer(name, _flat(basis.transpose(0, 3, 1, 2), len(idx)))  # (K, 2*h*w)
        # The identity at the coarse pixels plus a ring of one beyond the edge (linearly
        # extrapolated): upsampling a field padded with it gives the identity exactly at every
        # frame pixel, edges included, so the full-resolution grid never needs a separate add.
        self.register_buffer("identity_padded", _identity(flow_size, pad=1).permute(0, 3, 1, 2).contiguous())

        # Detail box: around the lips and eyes, where the expression flow jumps, its
        # full-resolution residual over the upsampled coarse field. It lives in a rest box
        # (tapering to zero at the edges) and lands in a frame box (where the head may carry it).
        lips = np.r_[rig.groups["inner_lip_upper"], rig.groups["inner_lip_lower"]]
        eyes = np.concatenate([rig.groups[f"eye_{s}_{e}"] for s in ("left", "right") for e in ("upper", "lower")
                               if f"eye_{s}_{e}" in rig.groups] or [lips])
        reach = (lambda idx, envelope, margin, align=1:
                 _reach_box(rig, idx, bounds, is_head, envelope, margin, align))
        halo = 2 * self.factor  # room for the residual's taper
        self.rest_box = _union(reach(lips, 0.0, MOUTH_MARGIN + halo), reach(eyes, 0.0, EYE_MARGIN + halo))
        mouth_box = reach(lips, HEAD_ENVELOPE, MOUTH_MARGIN, self.factor)
        self.frame_box = _union(mouth_box, reach(eyes, HEAD_ENVELOPE, EYE_MARGIN, self.factor))
        coarse_expr = self.expr_basis.view(-1, 2, flow_size, flow_size).numpy()
        residual = fit_detail_residual(rig, bounds, expr_idx, coarse_expr, self.rest_box, context)
        self.register_buffer("detail_basis", _flat(residual, len(expr_idx)))  # (K, 2*h*w)
        # The residual is sampled in the rest box's own normalized coordinates: the head flow is
        # scaled before its (linear) upsampling, the frame box's identity after.
        scale, shift = _box_map(size, self.rest_box)
        a, b, c, d = self.frame_box
        self.register_buffer("detail_scale", scale.view(1, 2, 1, 1))
        self.register_buffer("detail_origin", _identity(size)[:, a:b, c:d] * scale + shift)  # (1, h, w, 2)

        # The coarse expression flow is zero away from the face: its basis is kept only on the
        # box where it is not, grown by a ring of zeros (so sampling it with border padding still
        # gives zero outside, as the whole field would) and sampled in the box's own coordinates.
        self.expr_box = ea, eb, ec, ed = _support(coarse_expr, grow=1)
        self.register_buffer("expr_basis", _flat(coarse_expr[:, :, ea:eb, ec:ed], len(expr_idx)))  # (K, 2*he*we)
        scale, shift = _box_map(flow_size, self.expr_box)
        self.register_buffer("expr_scale", scale)
        self.register_buffer("expr_origin", _identity(flow_size) * scale + shift)  # (1, h, w, 2)

        self.mouth = MouthInterior(np.asarray(rig.points)[lips], np.asarray(rig.basis)[:, lips], mouth_box,
                                   palette(colours, _light(rig, image)))
        self.eyelids = nn.ModuleList()
        for s in ("left", "right"):
            if f"eye_{s}_upper" not in rig.groups:
                continue
            upper, lower = rig.groups[f"eye_{s}_upper"], rig.groups[f"eye_{s}_lower"]
            idx = np.r_[upper, lower]
            pts, width = np.asarray(rig.points), float(rig.face_width)
            self.eyelids.append(Eyelid(
                pts[idx], np.asarray(rig.basis)[:, idx], is_head.astype(np.float32),
                _clip_box(reach(idx, HEAD_ENVELOPE, EYE_MARGIN), self.frame_box),
                band_colour(image, pts[upper], LID_BAND, width, above=True, percentile=85),
                band_colour(image, pts[upper], LASH_BAND, width, above=True, percentile=10),
                band_colour(image, pts[lower], LOWER_BAND, width, above=False), width))

    def grids(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each pixel samples the rest image (normalized x, y): (B, S + 2f, S + 2f, 2) from
        the coarse flow alone, the frame at offset f (f = self.factor) within a one-coarse-pixel
        ring; and (B, h, w, 2) over the frame box with the full-resolution detail."""
        ring, hd, expr = self._coarse(coeffs)
        grid = F.interpolate(ring, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return grid.permute(0, 2, 3, 1), self._box_grid(ring, hd, expr)

    def _coarse(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 2, h + 2, h + 2) where each coarse pixel samples the rest image, identity folded in,
        with a one-pixel ring beyond the edges; and the head flow and expression coefficients."""
        batch, h = coeffs.shape[0], self.flow_size
        expr, head = coeffs.index_select(1, self.expr_index), coeffs.index_select(1, self.head_index)
        ea, eb, ec, ed = self.expr_box
        e = (expr @ self.expr_basis).view(batch, 2, eb - ea, ed - ec)
        hd = (head @ self.head_basis).view(batch, 2, h, h)
        q = self.expr_origin + hd.permute(0, 2, 3, 1) * self.expr_scale  # p + H(p) in the expression box
        coarse = hd + F.grid_sample(e, q, mode="bilinear", padding_mode="border", align_corners=False)
        # Replicate padding reproduces upsampling's clamped edges for the flow; the padded
        # identity extends linearly, so the upsampled sum is identity + upsampled flow exactly.
        ring = F.pad(coarse, (1, 1, 1, 1), mode="replicate") + self.identity_padded  # (B, 2, h + 2, h + 2)
        return ring, hd, expr

    def _box_grid(self, ring: torch.Tensor, hd: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2) sampling grid over the frame box: the upsampled coarse field plus the detail.
        Only the ring's coarse pixels under the box (and one beyond each edge, all bilinear
        upsampling reads) are upsampled: the same values as cropping the whole upsampled field."""
        f = self.factor
        a, b, c, d = self.frame_box
        crop = F.interpolate(ring[:, :, a // f:b // f + 2, c // f:d // f + 2], scale_factor=f, mode="bilinear",
                             align_corners=False)[:, :, f:f + b - a, f:f + d - c]
        return (crop + self._detail(hd, expr)).permute(0, 2, 3, 1)

    def _detail(self, hd: torch.Tensor, expr: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) the full-resolution detail over the frame box (normalized units), sampled
        where the head flow carries the rest box's pixels."""
        batch, f = hd.shape[0], self.factor
        a, b, c, d = self.frame_box
        ra, rb, rc, rd = self.rest_box
        field = (expr @ self.detail_basis).view(batch, 2, rb - ra, rd - rc)
        hw = F.interpolate(hd[:, :, a // f:b // f, c // f:d // f] * self.detail_scale, scale_factor=f,
                           mode="bilinear", align_corners=False)
        q = hw.permute(0, 2, 3, 1) + self.detail_origin  # the rest box's own normalized coordinates
        return F.grid_sample(field, q, mode="bilinear", padding_mode="zeros", align_corners=False)

    def flow(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 2, S, S) backward flow in normalized units: the pixel p shows the rest image at p + flow."""
        grid, box = self.grids(coeffs)
        f, s = self.factor, self.size
        a, _, c, _ = self.frame_box
        full = paste(grid[:, f:f + s, f:f + s].permute(0, 3, 1, 2), box.permute(0, 3, 1, 2), a, c)
        return full - _identity(s).to(full).permute(0, 3, 1, 2)

    def warp(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) the rest image warped to the pose, before the mouth interior."""
        return self._assemble(*self._sample(coeffs))

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, D) raw coefficients -> (B, 3, S, S) frames in [0, 1] (bilinear samples of the
        image and palettes no brighter than white: no clamp needed)."""
        outside, face = self._sample(coeffs)
        a, _, c, _ = self.frame_box  # the mouth and eyes are composited on the frame box's crop
        face = self.mouth(face, coeffs, (a, c))
        for eyelid in self.eyelids:
            face = eyelid(face, coeffs, (a, c))
        return self._assemble(outside, face)

    def frames(self, coeffs: torch.Tensor, out: np.ndarray | None = None) -> np.ndarray:
        """(B, D) raw coefficients -> (B, S, S, 3) uint8 RGB frames: `to_uint8(self(coeffs))`, faster; written
        into `out` where given (engine.render.pool renders into shared memory).

        On CPU the rest image is sampled by OpenCV's remap straight into uint8 (about 3x torch's
        float grid_sample at 512 px on one thread, with no conversion pass after): the coarse
        field is upsampled to pixel coordinates by cv2.resize (the same half-pixel bilinear
        rule), the full-resolution detail added over the frame box, one remap a frame. The mouth and
        eyelids are the same layers as in `forward`, painted only where they show (the mouth where the
        lips part, a lid where it has moved), each on its own box. remap places samples to 1/32 px,
        so frames differ from `forward`'s by a grey level or so at sharp edges. Elsewhere (CUDA)
        this is `forward` then `to_uint8`."""
        if self.image.device.type != "cpu":
            frames = to_uint8(self(coeffs.to(self.image.device)))
            if out is None:
                return frames
            out[...] = frames
            return out
        s, f = self.size, self.factor
        a, b, c, d = self.frame_box
        ring, hd, expr = self._coarse(coeffs)
        # normalized units (align_corners=False) -> pixel coordinates, which remap reads
        ring = ((ring + 1) * (s / 2) - 0.5).permute(0, 2, 3, 1).contiguous().numpy()  # channels last, as cv2 reads
        detail = (self._detail(hd, expr) * (s / 2)).permute(0, 2, 3, 1).contiguous().numpy()
        out = np.empty((len(ring), s, s, 3), np.uint8) if out is None else out
        if out.shape != (len(ring), s, s, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be a ({len(ring)}, {s}, {s}, 3) uint8 array, got {out.shape} {out.dtype}")
        side = ring.shape[1] * f
        for i in range(len(ring)):
            field = cv2.resize(ring[i], (side, side), interpolation=cv2.INTER_LINEAR)[f:f + s, f:f + s]
            field[a:b, c:d] += detail[i]
            # fixed-point maps and four channels take remap's vectorized path (about 20% faster)
            fixed, frac = cv2.convertMaps(field, None, cv2.CV_16SC2)
            rgba = cv2.remap(self.image_rgba, fixed, frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB, dst=out[i])
        # The interior and lids, painted only where they show (MouthInterior.window, Eyelid.visible),
        # each converted to float on its own box only (the eyes' boxes lie above the mouth's; where they
        # would overlap, a lid sees the mouth rounded to uint8, half a grey level at most).
        if (window := self.mouth.window(coeffs)) is not None:
            _composite(out, window, lambda crop, origin: self.mouth(crop, coeffs, origin, window))
        for eyelid in self.eyelids:
            if eyelid.visible(coeffs):
                _composite(out, eyelid.box, lambda crop, origin, lid=eyelid: lid(crop, coeffs, origin))
        return out

    def _sample(self, coeffs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The warped frame in pieces, each one 4-D grid_sample of the rest image: above, left
        of, right of and below the frame box (coarse flow), and the box itself (with detail)."""
        grid, box = self.grids(coeffs)
        image = self.image.expand(coeffs.shape[0], -1, -1, -1)  # (B, 3, S, S), not copied
        f, s = self.factor, self.size
        a, b, c, d = self.frame_box
        pieces = [grid[:, f:f + a, f:f + s], grid[:, f + a:f + b, f:f + c], grid[:, f + a:f + b, f + d:f + s],
                  grid[:, f + b:f + s, f:f + s], box]
        top, left, right, bottom, face = (
            F.grid_sample(image, g, mode="bilinear", padding_mode="border", align_corners=False) for g in pieces)
        return [top, left, right, bottom], face

    @staticmethod
    def _assemble(outside: list[torch.Tensor], face: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) from the pieces of `_sample`, with `face` in the frame box."""
        top, left, right, bottom = outside
        return torch.cat([top, torch.cat([left, face, right], dim=3), bottom], dim=2)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float frames in [0, 1] -> (B, S, S, 3) uint8 RGB numpy."""
    frames = frames.detach()
    scaled = torch.add(frames.new_tensor(0.5), frames, alpha=255).clamp_(0, 255)  # 0.5 + 255 x: one pass, rounds
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _composite(frames: np.ndarray, box: tuple[int, int, int, int], layer) -> None:
    """Run `layer(crop (B, 3, h, w) float, origin (y, x))` on `box` (y0, y1, x0, x1) of uint8 `frames`
    (B, S, S, 3), in place: only that box goes to float and back."""
    y0, y1, x0, x1 = box
    crop = torch.from_numpy(frames[:, y0:y1, x0:x1]).permute(0, 3, 1, 2).float().div_(255)
    frames[:, y0:y1, x0:x1] = to_uint8(layer(crop, (y0, x0)))


def _flat(x: np.ndarray, rows: int) -> torch.Tensor:
    x = np.ascontiguousarray(x, np.float32)
    return torch.from_numpy(x.reshape(rows, x.size // rows if rows else int(np.prod(x.shape[1:]))))


def _identity(size: int, pad: int = 0) -> torch.Tensor:
    """(1, size + 2 pad, size + 2 pad, 2) normalized x, y of pixel centres (align_corners=False),
    continuing linearly `pad` pixels beyond each edge."""
    c = (2 * torch.arange(-pad, size + pad, dtype=torch.float32) + 1) / size - 1
    return torch.stack(torch.meshgrid(c, c, indexing="xy"), -1)[None]


def _box_map(size: int, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(2,) scale and shift taking normalized x, y over a size x size grid to the normalized
    coordinates of its box (y0, y1, x0, x1) (align_corners=False)."""
    a, b, c, d = box
    scale = np.array([size / (d - c), size / (b - a)])
    shift = (size - 2 * np.array([c, a])) / np.array([d - c, b - a]) - 1
    return torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(shift, dtype=torch.float32)


def _support(fields: np.ndarray, grow: int) -> tuple[int, int, int, int]:
    """y0, y1, x0, x1 of the box where any of `fields` (..., h, w) is non-zero, grown by `grow`
    and clipped to the grid (the whole grid if they are zero everywhere)."""
    h, w = fields.shape[-2:]
    ys, xs = np.nonzero((fields.reshape(-1, h, w) != 0).any(0))
    if len(ys) == 0:
        return 0, h, 0, w
    return (max(int(ys.min()) - grow, 0), min(int(ys.max()) + 1 + grow, h),
            max(int(xs.min()) - grow, 0), min(int(xs.max()) + 1 + grow, w))


def _union(p, q):
    """Bounding box (y0, y1, x0, x1) of two boxes."""
    return min(p[0], q[0]), max(p[1], q[1]), min(p[2], q[2]), max(p[3], q[3])


def _clip_box(box, outer):
    """`box` (y0, y1, x0, x1) clipped to `outer`."""
    return max(box[0], outer[0]), min(box[1], outer[1]), max(box[2], outer[2]), min(box[3], outer[3])


def _reach_box(rig, idx: np.ndarray, bounds, is_head: np.ndarray, envelope: float, margin: int,
               align: int = 1) -> tuple[int, int, int, int]:
    """y0, y1, x0, x1 covering points `idx` wherever the coefficients take them: every
    blendshape pushing the same way at once, plus head pose within `envelope` of its range
    (root sum of squares of the head coefficients' reach: any one, or several partway).
    Edges snap outward to multiples of `align`."""
    low, high = (np.asarray(b, np.float64)[:, None, None] for b in bounds)
    basis = np.asarray(rig.basis, np.float64)[:, idx]  # (D, n, 2)
    ends = np.stack([low * basis, high * basis])[:, ~is_head]  # displacement at either end of each blendshape
    swing = envelope * np.sqrt(((np.maximum(-low, high) * basis)[is_head] ** 2).sum(0))
    rest = np.asarray(rig.points, np.float64)[idx]
    lo = ((rest + ends.min(0).sum(0) - swing).min(0) - margin) // align * align
    hi = -((-(rest + ends.max(0).sum(0) + swing).max(0) - margin - 1) // align) * align
    size = rig.image.shape[0]
    lo, hi = np.clip(lo, 0, size).astype(int), np.clip(hi, 0, size).astype(int)
    return int(lo[1]), int(hi[1]), int(lo[0]), int(hi[0])


def _light(rig, image: np.ndarray) -> float:
    """Brightness of the face's skin relative to the palette's reference, so teeth match the exposure."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(rig.points)[rig.groups["face_oval"]]).astype(np.int32)], 1)
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    skin = np.percentile(luma[mask > 0], 60) if mask.any() else SKIN_LUMA
    return float(np.clip(skin / SKIN_LUMA, 0.6, 1.15))
