"""From-scratch pre-training of the toy world's models (VAE, text-to-image UNet + text encoder, CLIP)."""

from lit_pref.toy.pretrain.clip import CLIPPretrain
from lit_pref.toy.pretrain.text_to_image import TextToImagePretrain
from lit_pref.toy.pretrain.vae import VAEPretrain

__all__ = ["CLIPPretrain", "TextToImagePretrain", "VAEPretrain"]
