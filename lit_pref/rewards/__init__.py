"""Rewards: the scorer interface, the reward models (ImageReward, LAION aesthetic, CLIP score, HPSv2, PickScore),
VCA's rewards and win rates (the toy world's judge, hidden-human reward and labeller are in :mod:`lit_pref.toy`)."""

from lit_pref.rewards.aesthetic import AestheticMLP, AestheticScorer
from lit_pref.rewards.base import Scorer
from lit_pref.rewards.clip_score import CLIPScore
from lit_pref.rewards.hpsv2 import HPSv2
from lit_pref.rewards.image_reward import ImageReward, ImageRewardConfig, ImageRewardModel
from lit_pref.rewards.pickscore import PickScore
from lit_pref.rewards.reward_model import RewardHead, RewardModelScorer
from lit_pref.rewards.stat_tracking import PerPromptStatTracker
from lit_pref.rewards.vca import (
    RoundWeightSchedule,
    VCAReward,
    consistency_reward,
    diversity_reward,
    mutual_information_reward,
    total_reward,
)
from lit_pref.rewards.win_rate import WinRate, win_rate

__all__ = [
    "AestheticMLP", "AestheticScorer", "CLIPScore", "HPSv2", "ImageReward", "ImageRewardConfig", "ImageRewardModel",
    "PickScore", "Scorer", "WinRate", "win_rate",
    "PerPromptStatTracker", "RewardHead", "RewardModelScorer", "RoundWeightSchedule", "VCAReward",
    "consistency_reward", "diversity_reward", "mutual_information_reward", "total_reward",
]
