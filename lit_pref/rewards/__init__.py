"""Rewards: the scorer interface, and the toy world's judge, hidden-human reward and labeller."""

from lit_pref.rewards.base import Scorer
from lit_pref.rewards.toy import BradleyTerryLabeller, Reading, ToyGroundTruthReward, ToyJudge

__all__ = ["BradleyTerryLabeller", "Reading", "Scorer", "ToyGroundTruthReward", "ToyJudge"]
