"""Random transforms applied to a whole batch (N, C, H, W float) at once, on any device.

Each `batched_op(t)` reads the settings of a torchvision v2 transform object and returns a function
`op(x, generator) -> x` that draws every sample's parameters the way the v2 transform draws them
for one image, from `generator`. An op may overwrite the batch it is given (the loader hands each
op a batch of its own). Geometry uses the grids torchvision's tensor kernels use.
Returns None for a transform (or a setting) that has no batched form here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
GRAY = (0.2989, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (high - low) + low


def _randint(high: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-sample integers in [0, high) (high >= 1), like torch.randint(0, high, (1,)) one by one."""
    return (torch.rand(high.shape, generator=g, device=g.device) * high).floor().long().clamp_max(high - 1)


def flip(p: float, dim: int) -> Op:
    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = torch.rand(x.shape[0], generator=g, device=g.device) < p
        return torch.where(chosen.view(-1, 1, 1, 1), x.flip(dim), x)

    return op


def normalize(mean: Any, std: Any) -> Op:
    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        m, s = _constants((tuple(mean), tuple(std)), x.dtype, x.device)
        return x.sub_(m.view(-1, 1, 1)).div_(s.view(-1, 1, 1))

    return op


@functools.lru_cache(maxsize=64)
def _constants(values: tuple, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Small constant tensors, made once per dtype and device rather than once per batch."""
    return tuple(torch.tensor(v, dtype=dtype, device=device) for v in values)


class Crop:
    """A random h x w crop of every image (no padding; and, with `flip_p`, a horizontal flip drawn
    after it, as RandomCrop then RandomHorizontalFlip draw them).

    Every row of a crop is a run of w consecutive pixels of its image, so a batch of crops is one
    gather of runs, not of pixels; a mirrored crop is the plain crop of the mirror image at the
    mirrored offset. `hold(images)` gives the images with their mirror images after them (when
    the crop flips), and `select(held, index, g)` picks the crops of images[index] from that,
    straight from a cache; called as an op, the crop does both on its batch.
    """

    def __init__(self, h: int, w: int, flip_p: float | None = None):
        self.h, self.w, self.flip_p = h, w, flip_p

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.select(self.hold(x), None, g)

    def hold(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (N, C, H, W), followed by their mirror images when this crop flips."""
        return torch.cat((images, images.flip(-1))) if self.flip_p is not None else images.contiguous()

    def select(self, held: torch.Tensor, index: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        """The crops of images[index] (of every image when `index` is None), drawn from `g`;
        `held` is what `hold(images)` gave."""
        _, c, height, width = held.shape
        count = held.shape[0] // 2 if self.flip_p is not None else held.shape[0]
        n = count if index is None else index.numel()
        tops = _randint(torch.full((n,), height - self.h + 1, device=held.device), g)
        lefts = _randint(torch.full((n,), width - self.w + 1, device=held.device), g)
        picked = torch.arange(n, device=held.device) if index is None else index.long()
        if self.flip_p is not None:
            mirror = torch.rand(n, generator=g, device=g.device) < self.flip_p
            picked = torch.where(mirror, picked + count, picked)
            lefts = torch.where(mirror, width - self.w - lefts, lefts)
        first = picked * (c * height * width) + tops * width + lefts
        starts = first.view(-1, 1) + _row_starts(c, height, width, self.h, held.device)
        runs = held.view(-1).as_strided((held.numel() - self.w + 1, self.w), (1, 1))
        return runs.index_select(0, starts.view(-1)).view(n, c, self.h, self.w)


@functools.lru_cache(maxsize=64)
def _row_starts(c: int, height: int, width: int, h: int, device: torch.device) -> torch.Tensor:
    """Where, within one C x height x width image, each of the h rows of each channel of its
    top-left box starts; (C * h,)."""
    rows = torch.arange(c).view(c, 1) * (height * width) + torch.arange(h).view(1, h) * width
    return rows.reshape(-1).to(device)


def random_crop(t: v2.RandomCrop, flip_p: float | None = None) -> Op | None:
    """RandomCrop; with `flip_p`, followed by RandomHorizontalFlip(flip_p), drawn in that order.
    Without padding, the Crop itself (which can pick straight from a cache)."""
    if not isinstance(t.fill, (int, float)):
        return None
    left, right, top, bottom = t.padding or (0, 0, 0, 0)
    h, w = t.size
    crop = Crop(h, w, flip_p)
    if not (t.pad_if_needed or any((left, right, top, bottom))):
        return crop

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        pads = [left, right, top, bottom]
        if t.pad_if_needed:
            extra_h = max(0, h - (x.shape[-2] + top + bottom))
            extra_w = max(0, w - (x.shape[-1] + left + right))
            pads = [left + extra_w, right + extra_w, top + extra_h, bottom + extra_h]
        if any(pads):
            mode = {"edge": "replicate"}.get(t.padding_mode, t.padding_mode)
            x = nnf.pad(x, pads, mode=mode, value=float(t.fill)) if mode == "constant" else nnf.pad(x, pads, mode=mode)
        return crop(x, g)

    return op


def unpadded(t: v2.RandomCrop) -> tuple[v2.Pad, v2.RandomCrop] | None:
    """RandomCrop's fixed padding as a Pad of its own and the crop left without it (the same
    images and the same draws), or None when the padding depends on the image (pad_if_needed)."""
    if not t.padding or t.pad_if_needed:
        return None
    pad = v2.Pad(list(t.padding), fill=t.fill, padding_mode=t.padding_mode)
    return pad, v2.RandomCrop(t.size, fill=t.fill, padding_mode=t.padding_mode)


def _boxes(n: int, height: int, width: int, scale: Any, log_ratio: Any, g: torch.Generator) -> tuple:
    """10 tries per sample of (h, w) with area fraction in `scale` and log aspect in `log_ratio`."""
    area = _uniform(n * 10, scale[0], scale[1], g).view(n, 10) * height * width
    aspect = torch.exp(_uniform(n * 10, float(log_ratio[0]), float(log_ratio[1]), g)).view(n, 10)
    return torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()


def _first_valid(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first valid try per sample, and whether there was one."""
    found = valid.any(1)
    first = torch.argmax(valid.int(), dim=1)
    return first, found


def _grid_mode(interpolation: Any) -> str | None:
    """'bilinear' or 'nearest' (what grid_sample does as torchvision does), else None."""
    if isinstance(interpolation, int):
        return None
    mode = v2.InterpolationMode(interpolation).value
    return mode if mode in ("bilinear", "nearest") else None


def random_resized_crop(t: v2.RandomResizedCrop) -> Op | None:
    out_h, out_w = t.size
    mode = _grid_mode(t.interpolation)
    if mode is None:
        return None

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        wide, high = _boxes(n, height, width, t.scale, t._log_ratio, g)
        first, found = _first_valid((wide > 0) & (wide <= width) & (high > 0) & (high <= height))
        w = wide.gather(1, first.view(-1, 1)).squeeze(1)
        h = high.gather(1, first.view(-1, 1)).squeeze(1)
        cw, ch = _central_crop(height, width, t.ratio)
        w = torch.where(found, w, torch.full_like(w, cw))
        h = torch.where(found, h, torch.full_like(h, ch))
        top = torch.where(found, _randint((height - h + 1).long(), g).to(x.dtype), (height - h).div(2).floor())
        left = torch.where(found, _randint((width - w + 1).long(), g).to(x.dtype), (width - w).div(2).floor())
        # output pixel centres (normalized, align_corners=False) mapped into each sample's box
        u = ((2 * torch.arange(out_w, device=x.device, dtype=x.dtype) + 1) / out_w - 1).view(1, 1, out_w)
        v = ((2 * torch.arange(out_h, device=x.device, dtype=x.dtype) + 1) / out_h - 1).view(1, out_h, 1)
        gx = (w / width).view(-1, 1, 1) * u + ((2 * left + w) / width - 1).view(-1, 1, 1)
        gy = (h / height).view(-1, 1, 1) * v + ((2 * top + h) / height - 1).view(-1, 1, 1)
        grid = torch.stack((gx.expand(n, out_h, out_w), gy.expand(n, out_h, out_w)), dim=-1)
        return nnf.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)

    return op


def _central_crop(height: int, width: int, ratio: Any) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, int(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return int(round(height * max(ratio))), height
    return width, height


def random_affine(t: v2.RandomAffine) -> Op | None:
    mode = _grid_mode(t.interpolation)
    fills = t.fill if isinstance(t.fill, (int, float)) or t.fill is None else None
    if mode is None or t.center is not None or fills not in (0, None):
        return None

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        return warp(x, _inverse_affine(*_affine_params(t, n, height, width, g)), mode)

    return op


def random_rotation(t: v2.RandomRotation) -> Op | None:
    mode = _grid_mode(t.interpolation)
    if mode is None or t.expand or t.center is not None or t.fill not in (0, None):
        return None

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        low, high = _constants(((float(t.degrees[0]),), (float(t.degrees[1]),)), torch.float64, g.device)
        angle = _host(torch.rand(x.shape[0], generator=g, device=g.device, dtype=torch.float64) * (high - low) + low)
        zeros = angle * 0
        # torchvision's rotate turns the other way from its affine: it passes -angle
        return warp(x, _inverse_affine(-angle, zeros, zeros, zeros + 1), mode)

    return op


def _affine_params(t: v2.RandomAffine, n: int, height: int, width: int, g: torch.Generator) -> tuple:
    """Per-sample (angle, tx, ty, scale, shear or None) drawn as v2.RandomAffine draws them (float64)."""
    low, span = _affine_range(t, height, width, g.device)
    values = _host(torch.rand(n, 6, generator=g, device=g.device, dtype=torch.float64)) * span + low
    angle, tx, ty, factor, shear_x, shear_y = (values[:, k] for k in range(6))
    return angle, tx.round(), ty.round(), factor, (shear_x, shear_y) if t.shear is not None else None


@functools.lru_cache(maxsize=64)
def _affine_range(t: v2.RandomAffine, height: int, width: int, device: torch.device) -> tuple[Any, Any]:
    """(low, high - low) of angle, tx, ty, scale, shear_x, shear_y for images of this size (as `_host` gives)."""
    dx = t.translate[0] * width if t.translate is not None else 0.0
    dy = t.translate[1] * height if t.translate is not None else 0.0
    scale = t.scale if t.scale is not None else (1.0, 1.0)
    shear = list(t.shear) if t.shear is not None else [0.0, 0.0]
    shear += [0.0, 0.0] if len(shear) == 2 else []
    low = torch.tensor((t.degrees[0], -dx, -dy, scale[0], shear[0], shear[2]), dtype=torch.float64, device=device)
    high = torch.tensor((t.degrees[1], dx, dy, scale[1], shear[1], shear[3]), dtype=torch.float64, device=device)
    return _host(low), _host(high - low)


def _host(values: torch.Tensor) -> Any:
    """CPU values as a numpy array: the matrix maths below is a few dozen steps on N numbers, about
    a microsecond each in numpy against several as torch ops. Elsewhere they stay (no device sync)."""
    return values.numpy() if values.device.type == "cpu" else values


def _inverse_affine(angle, tx, ty, scale, shear=None) -> Any:
    """torchvision's _get_inverse_affine_matrix (centre 0) for a batch: (N, 2, 3); shear in degrees
    as (shear_x, shear_y), or None. Numpy arrays in, numpy out; tensors in, a tensor out."""
    lib = np if isinstance(angle, np.ndarray) else torch
    rot = lib.deg2rad(angle)
    if shear is None:
        # the general formula below with zero shear gives exactly these values
        cos, sin = lib.cos(rot), lib.sin(rot)
        m0, m1, m3, m4 = cos / scale, sin / scale, -sin / scale, cos / scale
    else:
        a, b, c, d = _sheared(lib, rot, lib.deg2rad(shear[0]), lib.deg2rad(shear[1]))
        m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    left, up = -tx, -ty
    m2 = m0 * left + m1 * up
    m5 = m3 * left + m4 * up
    if lib is np:  # np.array of the rows: a fraction of np.stack's cost on small arrays
        return np.array((m0, m1, m2, m3, m4, m5)).T.reshape(-1, 2, 3)
    return torch.stack((m0, m1, m2, m3, m4, m5), 1).view(-1, 2, 3)


def _sheared(lib: Any, rot: Any, sx: Any, sy: Any) -> tuple[Any, ...]:
    a = lib.cos(rot - sy) / lib.cos(sy)
    b = -lib.cos(rot - sy) * lib.tan(sx) / lib.cos(sy) - lib.sin(rot)
    c = lib.sin(rot - sy) / lib.cos(sy)
    d = -lib.sin(rot - sy) * lib.tan(sx) / lib.cos(sy) + lib.cos(rot)
    return a, b, c, d


def warp(x: torch.Tensor, theta: Any, mode: str) -> torch.Tensor:
    """Every image of x through its inverse affine matrix (theta: N, 2, 3, numpy or tensor) as
    torchvision's affine does it: its grid, grid_sample, zeros outside. Run on one CPU thread (as the
    in-memory loader does), grid_sample starts no thread pool per small batch."""
    h, w = x.shape[-2:]
    if isinstance(theta, np.ndarray) and x.dtype == torch.float32:
        # scaled in numpy: two torch calls fewer per batch, the same float32 values
        scaled = torch.from_numpy(theta.astype(np.float32) / np.array([[0.5 * w], [0.5 * h]], dtype=np.float32))
    else:
        scaled = torch.as_tensor(theta).to(x.dtype) / _centred_coordinates(w, h, x.dtype, x.device)[1]
    return nnf.grid_sample(x, _affine_grid(scaled, w, h), mode=mode, padding_mode="zeros", align_corners=False)


def _affine_grid(scaled: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """torchvision's affine grid: pixel-centred coordinates through theta scaled by half the size
    (`scaled`); (N, H, W, 2). One matrix product (2N, 3) x (3, H*W), as torchvision's is one
    product per image."""
    basis, _ = _centred_coordinates(w, h, scaled.dtype, scaled.device)
    return torch.mm(scaled.reshape(-1, 3), basis).view(-1, 2, h, w).permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=64)
def _centred_coordinates(w: int, h: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows x, y, 1 of every pixel centre (3, H*W), and the half sizes (2, 1)."""
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device, dtype=dtype)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device, dtype=dtype)
    basis = torch.stack((xs.expand(h, w).reshape(-1), ys.view(h, 1).expand(h, w).reshape(-1),
                         torch.ones(h * w, device=device, dtype=dtype)))
    return basis, torch.tensor([[0.5 * w], [0.5 * h]], device=device, dtype=dtype)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3])


def color_jitter(t: v2.ColorJitter) -> Op | None:
    ranges = [t.brightness, t.contrast, t.saturation, t.hue]

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        order = torch.argsort(torch.rand(n, 4, generator=g, device=g.device), dim=1)
        factors = [None if r is None else _uniform(n, r[0], r[1], g).view(-1, 1, 1, 1).to(x.dtype) for r in ranges]
        for position in range(4):
            for which, factor in enumerate(factors):
                if factor is None or (which >= 2 and x.shape[1] == 1):
                    continue
                chosen = (order[:, position] == which).view(-1, 1, 1, 1)
                x = torch.where(chosen, _adjust(x, which, factor), x)
        return x

    return op


def _adjust(x: torch.Tensor, which: int, factor: torch.Tensor) -> torch.Tensor:
    """Brightness (0), contrast (1), saturation (2) or hue (3) of each sample by its factor."""
    if which == 3:
        from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

        h, s, v = _rgb_to_hsv(x).unbind(dim=-3)
        return _hsv_to_rgb(torch.stack(((h + factor.view(-1, 1, 1)).remainder(1.0), s, v), dim=-3))
    if which == 0:
        other = torch.zeros_like(x)
    elif which == 1:
        other = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    else:
        other = _gray(x)
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def random_grayscale(p: float) -> Op:
    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = (torch.rand(x.shape[0], generator=g, device=g.device) < p).view(-1, 1, 1, 1)
        return torch.where(chosen, _gray(x).expand_as(x), x)

    return op


def random_invert(p: float) -> Op:
    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = (torch.rand(x.shape[0], generator=g, device=g.device) < p).view(-1, 1, 1, 1)
        return torch.where(chosen, 1.0 - x, x)

    return op


def random_erasing(t: v2.RandomErasing) -> Op | None:
    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, height, width = x.shape
        apply = torch.rand(n, generator=g, device=g.device) < t.p
        high, wide = _boxes(n, height, width, t.scale, t._log_ratio, g)
        first, found = _first_valid((high < height) & (wide < width))
        h = high.gather(1, first.view(-1, 1)).squeeze(1).long()
        w = wide.gather(1, first.view(-1, 1)).squeeze(1).long()
        top = _randint((height - h + 1).clamp_min(1), g).view(-1, 1, 1, 1)
        left = _randint((width - w + 1).clamp_min(1), g).view(-1, 1, 1, 1)
        rows = torch.arange(height, device=x.device).view(1, 1, -1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, 1, -1)
        h, w = h.view(-1, 1, 1, 1), w.view(-1, 1, 1, 1)
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        mask = inside & (apply & found).view(-1, 1, 1, 1)
        if t.value is None:
            value = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype)
        else:
            value = torch.as_tensor(t.value, dtype=x.dtype, device=x.device).view(1, -1, 1, 1).expand_as(x)
        return torch.where(mask, value, x)

    return op


BUILDERS: dict[type, Callable[[Any], Op | None]] = {
    v2.RandomHorizontalFlip: lambda t: flip(t.p, -1),
    v2.RandomVerticalFlip: lambda t: flip(t.p, -2),
    v2.RandomCrop: random_crop,
    v2.RandomResizedCrop: random_resized_crop,
    v2.RandomAffine: random_affine,
    v2.RandomRotation: random_rotation,
    v2.RandomGrayscale: lambda t: random_grayscale(t.p),
    v2.RandomInvert: lambda t: random_invert(t.p),
    v2.ColorJitter: color_jitter,
    v2.RandomErasing: random_erasing,
    v2.Normalize: lambda t: normalize(t.mean, t.std),
}


# Transforms that only move pixels (and pad with an integer fill): exact on the uint8 images
MOVE_PIXELS = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomCrop)


def batched_op(t: Any) -> Op | None:
    """The batched form of the v2 transform `t`, or None when there is none."""
    builder = BUILDERS.get(type(t))
    return builder(t) if builder is not None else None


def batched_ops(steps: list) -> list[Op] | str:
    """The batched forms of `steps`, in order, or the name of the first step that has none.

    A RandomCrop followed by a RandomHorizontalFlip becomes one op (one gather, same draws).
    """
    ops, i = [], 0
    while i < len(steps):
        step, following = steps[i], steps[i + 1] if i + 1 < len(steps) else None
        if type(step) is v2.RandomCrop and type(following) is v2.RandomHorizontalFlip:
            op, i = random_crop(step, following.p), i + 2
        else:
            op, i = batched_op(step), i + 1
        if op is None:
            return type(step).__name__
        ops.append(op)
    return ops
