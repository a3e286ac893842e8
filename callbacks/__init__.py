"""Lightning callbacks: samples, checkpoint export + parity, plots, throughput, reasoning evaluation."""
from .checkpoint import CheckpointParityError, SpineCheckpoint, check_parity
from .plots import LossCurvePlot
from .reasoning_eval import ReasoningEval
from .responses import ResponseWriter
from .rl_plots import RLCurvePlot
from .samples import SampleGeneration
from .throughput import TokenThroughputMonitor

__all__ = ["CheckpointParityError", "LossCurvePlot", "ReasoningEval", "RLCurvePlot", "ResponseWriter", "SampleGeneration", "SpineCheckpoint", "TokenThroughputMonitor",
           "check_parity"]
