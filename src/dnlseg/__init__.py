"""dnlseg: Non-Local and Disentangled Non-Local context heads for semantic segmentation, on Lightning."""

__version__ = "0.1.0"
