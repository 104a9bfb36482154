"""test_user's application: who its worker is, read in the worker as an
operator would check it (ids, groups, umask), and which process imported
it (under --preload, the template)."""
import json
import os

IMPORTED_BY = os.getpid()


def identity():
    umask = os.umask(0)
    os.umask(umask)
    return {"pid": os.getpid(), "imported_by": IMPORTED_BY,
            "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
            "groups": sorted(os.getgroups()), "umask": umask}


async def app(scope, receive, send):          # HTTP only: test_user turns the lifespan off
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(identity()).encode()})
