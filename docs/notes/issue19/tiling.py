"""Tiled vs untiled output of a trained digits-sr4x model (argument: its checkpoint): a 40x56 mosaic
of defocused held-out scans, tiles of 16x16 input pixels. 'crop': each tile is read with `margin`
extra input pixels on each side (clipped at the image edge) and only its own 16x16 core is kept.
'blend': the same tiles, each output pixel weighted by its distance to the tile's inner edges
(see blend_tiled) and the weighted sum normalised."""
import sys
import torch
from gendeploy.trainer.checkpoint import load_generator
from gendeploy.trainer.data import load_pairs
torch.set_num_threads(1)
g, ck = load_generator(sys.argv[1])  # a digits-sr4x checkpoint, e.g. runs/digits-sr4x
s = ck.model_config.scale
low = load_pairs("digits", 32, 4, 1, split="test", blur=1.0).low[:35]
x = low.view(5, 7, 8, 8).permute(0, 2, 1, 3).reshape(1, 1, 40, 56)
with torch.no_grad():
    full = g(x)

def crop_tiled(x, tile, m):
    _, _, H, W = x.shape
    out = torch.zeros(1, 1, H * s, W * s)
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
            ya, xa, yb, xb = max(0, y0 - m), max(0, x0 - m), min(H, y1 + m), min(W, x1 + m)
            with torch.no_grad():
                t = g(x[..., ya:yb, xa:xb])
            out[..., y0 * s:y1 * s, x0 * s:x1 * s] = t[..., (y0 - ya) * s:(y1 - ya) * s, (x0 - xa) * s:(x1 - xa) * s]
    return out

def edge_distance(n, lo_inner, hi_inner):
    """Per output pixel of a tile: distance to its nearest inner edge (a tile edge that is not
    the image's); inf where both sides are the image's own edges."""
    i = torch.arange(n, dtype=torch.float32)
    d = torch.full((n,), float("inf"))
    if lo_inner: d = torch.minimum(d, i + 0.5)
    if hi_inner: d = torch.minimum(d, n - i - 0.5)
    return d

def blend_tiled(x, tile, m, c):
    """Tiles read m extra input pixels per side; a tile's output pixel weighs
    clamp((d - c*s) / (m*s), 0, 1), d its distance to the tile's inner edges: pixels within c input
    pixels of an inner edge never count, the rest ramp in; the sum is normalised."""
    _, _, H, W = x.shape
    acc, wsum = torch.zeros(1, 1, H * s, W * s), torch.zeros(1, 1, H * s, W * s)
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            ya, xa = max(0, y0 - m), max(0, x0 - m)
            yb, xb = min(H, y0 + tile + m), min(W, x0 + tile + m)
            with torch.no_grad():
                t = g(x[..., ya:yb, xa:xb])
            dy = edge_distance(t.shape[-2], ya > 0, yb < H)
            dx = edge_distance(t.shape[-1], xa > 0, xb < W)
            d = torch.minimum(dy[:, None], dx[None, :])
            w = ((d - c * s) / max(m * s, 1)).clamp(0, 1) + 1e-12
            acc[..., ya * s:yb * s, xa * s:xb * s] += t * w
            wsum[..., ya * s:yb * s, xa * s:xb * s] += w
    return acc / wsum

print(f"untiled output {tuple(full.shape)}; receptive field of this model: 11 input pixels")
for m in (0, 2, 4, 8, 11, 12, 16, 24):
    crop = (crop_tiled(x, 16, m) - full).abs().max().item() * 127.5
    ramp = (blend_tiled(x, 16, m, 0) - full).abs().max().item() * 127.5
    safe = (blend_tiled(x, 16, m, m // 2) - full).abs().max().item() * 127.5
    print(f"margin {m:2d} input px: max |tiled - untiled| in levels of 255: crop-and-stitch {crop:7.3f}, "
          f"blend ramping from the tile edge {ramp:7.3f}, blend ignoring the outer {m // 2} px {safe:7.3f}")
