"""A plain WSGI application (Flask, Django and the rest look the same to the
server): every worker serves it from a pool of threads.

    cluster-ext run -w 4 --threads 8 examples.wsgi_app:app

in the repository's root; then `curl 127.0.0.1:8000/`, `kill -HUP <primary>`
to reload with no failed request, Ctrl-C to stop. /slow?s=N answers after N
seconds (a request that a reload or a stop lets finish).
"""
import os
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(parse_qs(environ["QUERY_STRING"]).get("s", ["1"])[0]))
    body = f"wsgi {environ['PATH_INFO']} from pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
