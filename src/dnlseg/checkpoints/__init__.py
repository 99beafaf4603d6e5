"""Reading and writing weight and checkpoint files: torchvision/timm/mmseg weight files and the shape check of a
state dict against a model (``weight_files``), Lightning checkpoints written atomically (``checkpoint_io``) and
mmsegmentation checkpoints read as dnlseg's (``mmseg``; ``dnlseg convert`` writes them once). Exports nothing: the
command line imports ``weight_files`` before Lightning."""
