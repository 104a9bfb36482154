"""webapp's application in a module whose import fails in a worker only (as
one that reaches for something only the workers' environment lacks)."""
import cluster_ext as cluster

if cluster.is_worker:
    raise RuntimeError("no database from the workers")

from webapp import app  # noqa: E402, F401
