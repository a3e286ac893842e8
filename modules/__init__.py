"""LightningModules: thin training stages over the shared `spine` core."""
from .base import SpineModule, build_model
from .classifier import ClassifierModule
from .grpo import GRPOModule
from .instruction import InstructionModule
from .pretrain import PretrainModule
from .reasoning_eval import ReasoningEvalModule

__all__ = ["ClassifierModule", "GRPOModule", "InstructionModule", "PretrainModule", "ReasoningEvalModule", "SpineModule",
           "build_model"]
