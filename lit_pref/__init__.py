"""lit_pref: aligning text-to-image diffusion models with human preference, on PyTorch Lightning."""

__version__ = "0.1.0"
