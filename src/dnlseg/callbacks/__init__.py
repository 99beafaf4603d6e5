"""Lightning callbacks of dnlseg."""

from dnlseg.callbacks.attention_capture import AttentionCaptureCallback
from dnlseg.callbacks.attention_consistency import AttentionConsistency
from dnlseg.callbacks.attention_map_logger import AttentionMapLogger
from dnlseg.callbacks.branch_gradients import BranchGradientMonitor
from dnlseg.callbacks.fit_summary import FitSummary
from dnlseg.callbacks.module_interface import LossTerms
from dnlseg.callbacks.prediction_writer import PredictionWriter
from dnlseg.callbacks.progress import ParameterSummary, StepProgressBar
from dnlseg.callbacks.resumable_checkpoint import ResumableModelCheckpoint
from dnlseg.callbacks.separation_probe import SeparationProbe
from dnlseg.callbacks.sigterm_checkpoint import CheckpointOnSigterm
from dnlseg.callbacks.step_seed import StepSeed

__all__ = [
    "AttentionCaptureCallback",
    "AttentionConsistency",
    "AttentionMapLogger",
    "BranchGradientMonitor",
    "CheckpointOnSigterm",
    "FitSummary",
    "LossTerms",
    "ParameterSummary",
    "PredictionWriter",
    "ResumableModelCheckpoint",
    "SeparationProbe",
    "StepProgressBar",
    "StepSeed",
]
