"""Lightning callbacks: samples, checkpoint export + parity, plots, throughput, reasoning evaluation."""
from .checkpoint import CheckpointParityError, SpineCheckpoint, check_parity
from .plots import LossCurvePlot
from .predictions import PredictionWriter
from .progress import SpineModelSummary, SpineRichProgressBar, TextProgress
from .reasoning_eval import ReasoningEval
from .responses import ResponseWriter
from .rl_plots import RLCurvePlot
from .samples import SampleGeneration
from .threads import TorchThreads
from .throughput import TokenThroughputMonitor

__all__ = ["CheckpointParityError", "LossCurvePlot", "PredictionWriter", "ReasoningEval", "RLCurvePlot", "ResponseWriter",
           "SampleGeneration", "SpineCheckpoint", "SpineModelSummary", "SpineRichProgressBar", "TextProgress",
           "TokenThroughputMonitor", "TorchThreads",
           "check_parity"]
