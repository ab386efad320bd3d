"""The toy world, all of it: a tiny text-to-image world of coloured shapes with a hidden human judge, that lets
every method train and be judged on CPU.

- vocabulary, captions and the renderer (:mod:`lit_pref.toy.world`); captioned images to pre-train on
  (:mod:`lit_pref.toy.images`) and the pre-training modules (:mod:`lit_pref.toy.pretrain`);
- the judge that reads an image (:mod:`lit_pref.toy.judge`) and the hidden human: a reward and a noisy
  Bradley-Terry labeller (:mod:`lit_pref.toy.human`); preference pairs of the base model (:mod:`lit_pref.toy.pairs`);
- VCA: the simulated user and dialogue generator (:mod:`lit_pref.toy.user`), the refiner that understands the
  user's phrases (:mod:`lit_pref.toy.refiner`) and the dialogue users of VCA-PPO (:mod:`lit_pref.toy.dialogue_users`);
- RPO: the offline critic and editor (:mod:`lit_pref.toy.rpo`).

Production code never imports this package. The toy model itself is the shipped folder ``lit_pref/assets/toy``
(official diffusers and open_clip layouts), which the backbone and the CLIP loaders resolve from the name ``"toy"``
without importing the toy world.
"""

from lit_pref.toy.dialogue_users import ToyDialogueUsers, toy_target
from lit_pref.toy.human import BradleyTerryLabeller, ToyGroundTruthReward
from lit_pref.toy.images import ToyImageDataModule, ToyImageDataset
from lit_pref.toy.judge import Reading, ToyJudge
from lit_pref.toy.pairs import ToyPreferenceDataModule
from lit_pref.toy.pretrain import CLIPPretrain, TextToImagePretrain, VAEPretrain
from lit_pref.toy.refiner import ToyRefiner, toy_edits
from lit_pref.toy.rpo import ToyCritic, ToyEditor
from lit_pref.toy.user import ToySimulatedUser, make_toy_dialogues, toy_start
from lit_pref.toy.world import HELDOUT_COMBOS, SIZES, Caption, Scene, caption, parse_caption, prompts, render, sample_scene

__all__ = [
    "BradleyTerryLabeller", "CLIPPretrain", "Caption", "HELDOUT_COMBOS", "Reading", "SIZES", "Scene",
    "TextToImagePretrain", "ToyCritic", "ToyDialogueUsers", "ToyEditor", "ToyGroundTruthReward",
    "ToyImageDataModule", "ToyImageDataset", "ToyJudge", "ToyPreferenceDataModule", "ToyRefiner", "ToySimulatedUser",
    "VAEPretrain", "caption", "make_toy_dialogues", "parse_caption", "prompts", "render", "sample_scene", "toy_edits",
    "toy_start", "toy_target",
]
