"""python -m cluster_ext run|demo ... (see cli.py)."""
import sys

from .cli import main

sys.exit(main(prog="python -m cluster_ext"))
