"""Lightning callbacks of dnlseg."""

from dnlseg.callbacks.branch_gradients import BranchGradientMonitor
from dnlseg.callbacks.fit_summary import FitSummary
from dnlseg.callbacks.prediction_writer import PredictionWriter
from dnlseg.callbacks.separation_probe import SeparationProbe

__all__ = ["BranchGradientMonitor", "FitSummary", "PredictionWriter", "SeparationProbe"]
