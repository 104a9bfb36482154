"""webapp's application in a module that records each import of it: the
importing process's pid, one line of MARKER_FILE."""
import os

with open(os.environ["MARKER_FILE"], "a") as marker:
    marker.write(f"{os.getpid()}\n")

from webapp import app  # noqa: E402, F401
