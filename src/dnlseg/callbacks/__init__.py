"""Lightning callbacks of dnlseg."""

from dnlseg.callbacks.branch_gradients import BranchGradientMonitor
from dnlseg.callbacks.fit_summary import FitSummary
from dnlseg.callbacks.separation_probe import SeparationProbe

__all__ = ["BranchGradientMonitor", "FitSummary", "SeparationProbe"]
