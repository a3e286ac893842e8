"""LightningModules: thin training stages over the shared `spine` core."""
from .base import SpineModule, build_model
from .pretrain import PretrainModule
from .reasoning_eval import ReasoningEvalModule

__all__ = ["PretrainModule", "ReasoningEvalModule", "SpineModule", "build_model"]
