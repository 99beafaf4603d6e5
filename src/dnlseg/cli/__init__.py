"""The command line: the ``dnlseg`` console script (``command``), its LightningCLI (``lightning_cli``), the other
subcommands (``analyze``, ``convert``, ``export``), the checks before anything is built (``preflight``), one-line
parse errors (``parse_errors``), where each command writes (``run_dirs``), the config keys and class paths renamed
since (``renamed_keys``) and third-party noise kept out (``third_party``). Exports nothing: ``dnlseg --help``
imports ``command`` only."""
