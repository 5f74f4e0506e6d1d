"""gendeploy: from a PyTorch GAN to verified, served engines."""

__version__ = "0.1.0"
