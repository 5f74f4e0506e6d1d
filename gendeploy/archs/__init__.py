"""Published image-to-image generators, written here from their papers and public descriptions:
ESRGAN's RRDBNet (``esrgan``), Real-ESRGAN's SRVGGNetCompact (``realesrgan``), pix2pix's U-Net
(``pix2pix``) and CycleGAN's ResNet generator (``cyclegan``).

Each takes ``(N, C, H, W)`` float images and returns ``(N, C', s*H, s*W)``; each says its scale
``s`` and the multiple ``size_multiple`` its sides must be (1: any size). Their state-dict keys are
the original repositories' own, so published checkpoints load into them (``archs.load``). Importing
this package imports nothing heavy; each module needs torch only.
"""
