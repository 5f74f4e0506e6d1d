"""The proof models of issue 19: tiny versions of the four published image-to-image generators
(``gendeploy.archs``), briefly fitted so their weights look trained (a random CycleGAN's instance
norms amplify INT8 rounding past any bound; a few steps of fitting end that), saved as the
``.safetensors`` a user would pass with ``--weights``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gendeploy.export.image_source import in_unit_range
from gendeploy.export.user_module import build_user_module
from gendeploy.testimages import synthetic_images
from gendeploy.tiling import to_model


@dataclass(frozen=True)
class ProofModel:
    name: str
    factory: str  # --model
    scale: int
    multiple: int
    steps: int  # of fitting

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What it is fitted to: bilinear upscaling (super-resolution), or a colour translation
        (channels reversed and negated)."""
        if self.scale > 1:
            return F.interpolate(x, scale_factor=float(self.scale), mode="bilinear")
        return -x.flip(1)


PROOF_MODELS = {
    m.name: m
    for m in (
        ProofModel("rrdbnet", "gendeploy.archs.esrgan:rrdbnet_tiny", 4, 1, 10),
        ProofModel("srvgg", "gendeploy.archs.realesrgan:srvgg_tiny", 4, 1, 40),
        ProofModel("unet", "gendeploy.archs.pix2pix:unet_tiny", 1, 32, 40),
        ProofModel("cyclegan", "gendeploy.archs.cyclegan:resnet_tiny", 1, 4, 60),
    )
}


def fitted_weights(proof: ProofModel, out: Path, seed: int = 0) -> Path:
    """``proof``'s factory fitted for ``proof.steps`` Adam steps on synthetic 32x32 images, in
    [-1, 1] through ``PixelRange`` as export runs it; its state dict written to ``out``."""
    torch.manual_seed(seed)
    module = build_user_module(proof.factory, None, random_weights=True).module.train()
    model = in_unit_range(module, getattr(module, "value_range", (-1.0, 1.0))).train()
    side = 16 if proof.scale > 1 else 32  # an upscaler's output is scale**2 times larger
    images = torch.from_numpy(to_model(synthetic_images(32, side, side, 3, first_seed=seed)))
    optimizer = torch.optim.Adam(module.parameters(), 2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(proof.steps):
        batch = images[rng.integers(0, len(images), 8)]
        loss = (model(batch) - proof.target(batch)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_file(module.eval().state_dict(), str(out))
    return out
