"""--preload's tests: an ASGI application that answers /facts with what its
worker can observe of how it started (conform_probe.py's facts: the tests
put tests/apps on PYTHONPATH), the version its source held when it was
imported and which process imported it; each import is logged to
imports.log beside this file."""
import json
import os
import time

import conform_probe

import cluster_ext as cluster

VERSION = "v1"
IMPORTED_BY = os.getpid()
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "imports.log"), "a") as log:
    log.write(f"{IMPORTED_BY} {VERSION} worker={cluster.is_worker}\n")
print(f"preload_app {VERSION} imported by {IMPORTED_BY}", flush=True)
if os.path.exists(os.path.join(HERE, "slow")):      # an import that takes a while
    with open(os.path.join(HERE, "slow")) as f:
        time.sleep(float(f.read()))
if os.environ.get("PRELOAD_LIE") and cluster.worker is None:
    # application code in the template, compromised: it answers every fork
    # with a pid that is not the primary's child (the primary's own)
    from cluster_ext.fleet import preload
    preload._fork_worker = lambda *args: {"pid": os.getppid()}


def facts():
    found = conform_probe.facts(conform_probe.channel_fd())
    found.update(version=VERSION, imported_by=IMPORTED_BY, pid=os.getpid(),
                 ppid=os.getppid(), worker=cluster.worker.id)
    return found


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps(facts()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
