#!/usr/bin/env python3
"""Preload memory and reload: `cluster-ext run -w 4`, with and without
--preload, beside gunicorn's sync workers (-w 4), with and without its
--preload, each serving a real Django project's WSGI application on
127.0.0.1. The project (made by `python -m django startproject` in a temp
dir, admin enabled as generated, DEBUG off) has a view at / that answers
"VERSION pid"; the module that holds VERSION is imported by urls.py and
makes --mib MiB of random bytes (1 MiB bytes objects, pages really written)
at import.

For each server, once every worker has answered a few requests: the PSS
(and USS, RSS) of its whole tree summed from /proc/PID/smaps_rollup (the
primary or arbiter, cluster_ext's preload template, every worker); then
VERSION is rewritten from "v1" to "v2" on disk, SIGHUP sent, and the reload
timed until none of the old workers is alive and four new ones have answered
(polled in bursts of requests, so to about 0.15 s; cluster_ext's own "reload
done in" figure beside it); then what / serves. Every wait is bounded; each
server's process group is stopped (SIGTERM, then SIGKILL), and any process
of its tree still alive after is killed by pid and reported (exit status 1).
gunicorn --preload re-forks its workers from the arbiter's loaded copy, so
code it imported before the fork is not reloaded: that shows as it is.

Django imports the URLconf (urls.py, so the data and the view) lazily, at a
process's first request: with the project as generated, a preloading
server's template or arbiter has not imported it, and each worker makes its
own copy. --urls eager has wsgi.py import it after get_wsgi_application(),
so that a preload does load it before the fork; --urls both (the default)
measures the two layouts. Prints a Markdown table, then one JSON line.

    pip install django gunicorn '.[web]'
    python3 bench/preload_memory.py [--python .venv/bin/python] [--urls both|lazy|eager]
        [--mib 100] [--start-timeout 120] [--reload-timeout 120]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

WORKERS = 4
SERVERS = ("cluster-ext", "cluster-ext --preload", "gunicorn", "gunicorn --preload")

DATA_MODULE = '''\
"""About {mib} MiB of read-only data, made at import: random bytes, so
that every page is written (no shared zero page), in 1 MiB objects."""
import os

VERSION = "v1"

_blob = os.urandom({mib} << 20)
CHUNKS = tuple(_blob[i:i + (1 << 20)] for i in range(0, len(_blob), 1 << 20))
del _blob
'''

VIEWS_MODULE = '''\
import os
import time

from django.http import HttpResponse

from . import bigdata


def index(request):
    pause = float(request.GET.get("sleep", "0"))
    if pause > 0:                   # keeps a sync worker busy, so the next goes elsewhere
        time.sleep(min(pause, 2.0))
    return HttpResponse(f"{bigdata.VERSION} {os.getpid()}\\n", content_type="text/plain")
'''

EAGER_URLS = '''
# --urls eager: the URLconf (and with it the data) imported now, not at the
# first request, so that a preloading server loads it before forking.
import project.urls  # noqa: E402,F401
'''


# ---- the project ----------------------------------------------------------------------

def make_project(py, root, mib, eager):
    subprocess.run([py, "-m", "django", "startproject", "project", root], check=True,
                   timeout=120)
    pkg = os.path.join(root, "project")
    settings = os.path.join(pkg, "settings.py")
    with open(settings) as f:
        text = f.read()
    assert "django.contrib.admin" in text
    text = re.sub(r"^DEBUG = .*$", "DEBUG = False", text, flags=re.M)
    text = re.sub(r"^ALLOWED_HOSTS = .*$", 'ALLOWED_HOSTS = ["127.0.0.1"]', text, flags=re.M)
    with open(settings, "w") as f:
        f.write(text)
    with open(os.path.join(pkg, "bigdata.py"), "w") as f:
        f.write(DATA_MODULE.format(mib=mib))
    with open(os.path.join(pkg, "views.py"), "w") as f:
        f.write(VIEWS_MODULE)
    urls = os.path.join(pkg, "urls.py")
    with open(urls) as f:
        text = f.read()
    for old, new in (("from django.urls import path\n",
                      "from django.urls import path\n\nfrom . import bigdata, views  # noqa\n"),
                     ("urlpatterns = [\n", 'urlpatterns = [\n    path("", views.index),\n')):
        assert old in text, f"urls.py as generated has no {old!r}"
        text = text.replace(old, new, 1)
    with open(urls, "w") as f:
        f.write(text)
    if eager:
        with open(os.path.join(pkg, "wsgi.py"), "a") as f:
            f.write(EAGER_URLS)
    return pkg


def set_version(pkg, version):
    path = os.path.join(pkg, "bigdata.py")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(re.sub(r'^VERSION = "v\d+"$', f'VERSION = "{version}"', text, flags=re.M))
    shutil.rmtree(os.path.join(pkg, "__pycache__"), ignore_errors=True)


# ---- HTTP -----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, sleep=0.0, timeout=10.0):
    """(version, pid) from /, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/?sleep={sleep}" if sleep else "/",
                     headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        if resp.status != 200:
            return None
        version, pid = body.split()
        return version, int(pid)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def burst(pool, port, n=2 * WORKERS, sleep=0.1):
    """n concurrent requests, each holding its worker sleep seconds, so that
    they spread over the workers (a sync worker serves one at a time)."""
    return [r for r in pool.map(lambda _: get(port, sleep), range(n)) if r is not None]


# ---- processes ------------------------------------------------------------------------

def proc_stat(pid):
    """(ppid, starttime) of pid, or None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def tree(root):
    """root and every descendant of it alive: {pid: starttime}."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                stats[int(name)] = st
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root] if root in stats else []
    while todo:
        pid = todo.pop()
        found[pid] = stats[pid][1]
        todo += [child for child in children.get(pid, ()) if child not in found]
    return found


def memory(pids):
    """{pid: {"pss", "uss", "rss"} in KiB} from smaps_rollup."""
    out = {}
    for pid in pids:
        kib = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:          # the first, the range's, has no "kB" field
                    key, _, value = line.partition(":")
                    if value.strip().endswith(" kB"):
                        kib[key] = int(value.split()[0])
        except OSError:
            continue
        out[pid] = {"pss": kib.get("Pss", 0), "rss": kib.get("Rss", 0),
                    "uss": kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)}
    return out


def alive(pid, start):
    st = proc_stat(pid)
    return st is not None and st[1] == start


def command(py, server, port):
    bind = f"127.0.0.1:{port}"
    preload = ["--preload"] if server.endswith("--preload") else []
    if server.startswith("cluster-ext"):
        return [os.path.join(os.path.dirname(py), "cluster-ext"), "run", "-w", str(WORKERS),
                "--bind", bind, *preload, "project.wsgi:application"]
    return [py, "-m", "gunicorn", "-w", str(WORKERS), "-b", bind, "--log-level", "info",
            *preload, "project.wsgi:application"]


class Server:
    def __init__(self, py, server, root):
        self.name, self.port = server, free_port()
        self.log = open(os.path.join(root, f"{server.replace(' ', '')}.log"), "w+")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.proc = subprocess.Popen(command(py, server, self.port), cwd=root, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.seen = {}                    # every pid of its tree ever seen: starttime

    def look(self):
        now = tree(self.proc.pid)
        self.seen.update(now)
        return now

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """SIGTERM to its process group, SIGKILL after 30 s; then whatever of
        its tree outlived it, by pid. The pids left alive, if any."""
        self.look()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p, s) for p, s in self.seen.items()):
            time.sleep(0.1)
        left = [p for p, s in self.seen.items() if alive(p, s)]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        return left


# ---- one server -----------------------------------------------------------------------

def workers_answering(srv, pool, timeout):
    """The pids of WORKERS distinct workers that answered, within timeout."""
    pids, deadline = set(), time.monotonic() + timeout
    while len(pids) < WORKERS:
        if time.monotonic() > deadline or srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name}: {len(pids)} of {WORKERS} workers answered "
                               f"within {timeout} s:\n{srv.log_text()[-3000:]}")
        pids |= {pid for _, pid in burst(pool, srv.port)}
        srv.look()
        if len(pids) < WORKERS:
            time.sleep(0.1)
    return pids


def measure(py, server, root, pkg, args, pool):
    set_version(pkg, "v1")
    srv = Server(py, server, root)
    row = {"server": server}
    try:
        workers = workers_answering(srv, pool, args.start_timeout)
        for _ in range(3):                # a few more each: warmed up
            burst(pool, srv.port)
        time.sleep(0.5)
        procs = memory(srv.look())
        row.update(mem_row(procs, workers, srv.proc.pid))

        set_version(pkg, "v2")
        starts = {pid: srv.seen[pid] for pid in workers}
        t0 = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGHUP)
        new, took = set(), None
        deadline = t0 + args.reload_timeout
        while time.monotonic() < deadline and srv.proc.poll() is None:
            new |= {pid for _, pid in burst(pool, srv.port, sleep=0.05) if pid not in workers}
            srv.look()
            if len(new) >= WORKERS and not any(alive(p, s) for p, s in starts.items()):
                took = time.monotonic() - t0
                break
            time.sleep(0.05)
        row["reload_s"] = None if took is None else round(took, 2)
        row["reload_new_workers"] = len(new)
        row["reload_old_alive"] = sum(alive(p, s) for p, s in starts.items())
        if server.startswith("cluster-ext"):
            row["reload_logged_s"] = logged_reload(srv, 15 if took is not None else 0)
        answers = []
        for _ in range(3):
            answers += burst(pool, srv.port)
        versions = sorted({v for v, _ in answers})
        row["versions_after"] = versions
        row["new_code"] = ("yes" if versions == ["v2"] else "no" if versions == ["v1"]
                           else "mixed" if versions else "no answer")
        after = memory(srv.look())
        row["pss_after_reload_mib"] = mib(sum(m["pss"] for m in after.values()))
    except RuntimeError as exc:
        row["error"] = str(exc)
        print(exc, file=sys.stderr)
    finally:
        left = srv.stop()
        row["left_alive"] = left
        set_version(pkg, "v1")
    return row


def mib(kib):
    return round(kib / 1024, 1)


def mem_row(procs, workers, primary):
    total = {k: sum(m[k] for m in procs.values()) for k in ("pss", "uss", "rss")}
    roles = {"primary": [primary], "workers": [p for p in procs if p in workers],
             "other": [p for p in procs if p != primary and p not in workers]}
    return {"procs": len(procs), "pss_mib": mib(total["pss"]), "uss_mib": mib(total["uss"]),
            "rss_mib": mib(total["rss"]),
            "pss_by_role_mib": {role: [mib(procs[p]["pss"]) for p in pids if p in procs]
                                for role, pids in roles.items()}}


def logged_reload(srv, timeout):
    """cluster_ext's own figure: 'reload done in X s' (or ms), from its log."""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(r"reload done in ([\d.]+) (m?s)", srv.log_text())
        if m:
            return round(float(m[1]) / (1000 if m[2] == "ms" else 1), 3)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


# ---- main -----------------------------------------------------------------------------

def table(rows):
    out = ["| server | URLconf | PSS MiB | USS MiB | RSS MiB | procs | reload s "
           "| serves new code after reload |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        reload = "none in time" if r.get("reload_s") is None else f"{r['reload_s']:.2f}"
        if r.get("reload_logged_s") is not None:
            reload += f" (logged {r['reload_logged_s']:.2f})"
        new = r.get("new_code", "error")
        if r["server"] == "gunicorn --preload" and new == "no":
            new += " (re-forked from the arbiter's loaded code)"
        out.append(f"| {r['server']} | {r['urls']} | {r.get('pss_mib', '-')} | "
                   f"{r.get('uss_mib', '-')} | {r.get('rss_mib', '-')} | {r.get('procs', '-')} | "
                   f"{reload} | {new} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter with django, gunicorn and cluster_ext[web]")
    ap.add_argument("--urls", choices=("both", "lazy", "eager"), default="both",
                    help="lazy: the URLconf as Django loads it (first request); eager: "
                         "imported by wsgi.py; both (default)")
    ap.add_argument("--mib", type=int, default=100, help="MiB of data the project imports")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--reload-timeout", type=float, default=120.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (project, logs)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # the servers stopped all the same
    py = os.path.abspath(args.python)
    layouts = ("lazy", "eager") if args.urls == "both" else (args.urls,)
    rows = []
    with concurrent.futures.ThreadPoolExecutor(4 * WORKERS) as pool:
        for urls in layouts:
            root = tempfile.mkdtemp(prefix=f"preload-memory-{urls}-")
            try:
                pkg = make_project(py, root, args.mib, urls == "eager")
                for server in SERVERS:
                    row = measure(py, server, root, pkg, args, pool)
                    row["urls"] = urls
                    rows.append(row)
                    print(f"{server:22} urls {urls:5}  PSS {row.get('pss_mib', '-'):>7} MiB  "
                          f"reload {row.get('reload_s', '-')} s  "
                          f"new code {row.get('new_code', 'error')}", file=sys.stderr,
                          flush=True)
            finally:
                if args.keep:
                    print(f"kept {root}", file=sys.stderr)
                else:
                    shutil.rmtree(root, ignore_errors=True)
    print(table(rows))
    print(json.dumps(rows))
    return 1 if any(r["left_alive"] or "error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
