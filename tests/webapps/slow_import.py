"""webapp's application behind an import that takes SLOW_IMPORT seconds (3
by default), as a module that opens its pools or loads a model at import."""
import os
import time

time.sleep(float(os.environ.get("SLOW_IMPORT", "3")))

from webapp import app  # noqa: E402, F401
