"""--user, --group and --umask (issue 28): the primary stays as it is and
binds (a port below 1024 as root); the workers, and --preload's template,
serve as the user with its groups, and every process the primary starts
has the umask. The application reads its identity in the worker and
answers it over HTTP, as an operator would check it."""
import grp
import os
import pwd
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import free_port
from test_logging import found_in
from test_web import WEBAPPS, serving, stop

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

CLI = str(Path(sys.executable).parent / "cluster-ext")
SPEC = "identity_app:app"


def cli(app, *options, port=None, workers=2, run_as=(CLI,)):
    """`cluster-ext run` of the identity application, by run_as (the
    console script, or a command that ends in it); (the process, its port)."""
    port = port or free_port()
    cmd = [*run_as, "run", "-w", str(workers), "--bind", f"127.0.0.1:{port}",
           "--lifespan", "off", *options, SPEC]
    return app(SPEC, cmd=cmd, cwd=WEBAPPS, merge_stderr=True), port


def identities(port, workers=2):
    """What each worker says it is, asked until each has answered (SCHED_RR
    hands each new connection to the next worker)."""
    seen = {}
    for _ in range(10 * workers):
        said = httpx.get(f"http://127.0.0.1:{port}/", timeout=10).json()
        seen[said["pid"]] = said
        if len(seen) == workers:
            return list(seen.values())
    pytest.fail(f"{workers} workers, but only these answered: {seen}")


def expected(user, gid):
    """A worker of user whose group is gid: every id, and initgroups' list."""
    return {"uid": user.pw_uid, "euid": user.pw_uid, "gid": gid, "egid": gid,
            "groups": sorted(set(os.getgrouplist(user.pw_name, gid)))}


def seen_as(said):
    return {key: said[key] for key in ("uid", "euid", "gid", "egid", "groups")}


def uid_of(pid):
    """A process's real and effective uids, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("Uid:"))
    return [int(n) for n in line.split()[1:3]]


def serving_as(name):
    """The user name, once known to be able to run what a worker runs: this
    interpreter and cluster_ext (pyenv's, under /root, cannot be run by
    another user: the workers would fail to exec). Skips otherwise."""
    if os.geteuid() != 0:
        pytest.skip("only root can serve as another user")
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"no user {name!r} here")
    try:
        done = subprocess.run([sys.executable, "-c", "import cluster_ext.web, uvicorn"],
                              user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                              cwd=WEBAPPS, capture_output=True, text=True, timeout=30)
        why = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else None
    except OSError as exc:
        why = str(exc)
    if why is not None:
        pytest.skip(f"{name} cannot run {sys.executable} with cluster_ext: {why}")
    return user


def group_named(name):
    try:
        return grp.getgrnam(name)
    except KeyError:
        pytest.skip(f"no group {name!r} here")


@pytest.fixture
def user_with_groups():
    """A user with supplementary groups: one the system has, or a throwaway
    one made with useradd and removed after."""
    if os.geteuid() != 0:
        pytest.skip("only root can serve as another user")
    for user in pwd.getpwall():
        if user.pw_uid != 0 and len(set(os.getgrouplist(user.pw_name, user.pw_gid))) > 1:
            yield serving_as(user.pw_name)
            return
    if shutil.which("useradd") is None:
        pytest.skip("no user with supplementary groups, and no useradd to make one")
    name = f"cxuser{os.getpid()}"
    subprocess.run(["groupadd", "--system", f"{name}x"], check=True)
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false",
                        "--groups", f"{name}x", name], check=True)
        try:
            yield serving_as(name)
        finally:
            subprocess.run(["userdel", name], check=True)
    finally:
        subprocess.run(["groupdel", f"{name}x"], check=True)


def privileged_port():
    """A port below 1024 that nothing listens on right now."""
    for port in random.sample(range(600, 1024), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


# ---- the workers serve as the user -------------------------------------------------------

@pytest.mark.parametrize("preload", [False, True])
def test_the_workers_serve_as_user_and_group_with_the_umask(app, tmp_path, preload):
    """The primary stays root; its files are its own, under the umask."""
    nobody, nogroup = serving_as("nobody"), group_named("nogroup")
    pid_file, control, unix = (tmp_path / name for name in ("app.pid", "control", "web.sock"))
    a, port = cli(app, "--user", "nobody", "--group", "nogroup", "--umask", "027",
                  "--pid-file", str(pid_file), "--control", str(control),
                  "--bind", f"unix:{unix}", *(["--preload"] if preload else []))
    serving(a)                     # once every address listens
    workers = identities(port)
    for said in workers:
        assert seen_as(said) == expected(nobody, nogroup.gr_gid)
        assert said["umask"] == 0o027
    assert uid_of(a.pid) == [0, 0]
    importers = {said["imported_by"] for said in workers}
    if preload:         # the template imported the application, as nobody
        [template] = importers
        assert template != a.pid and uid_of(template) == [nobody.pw_uid] * 2
    else:
        assert importers == {said["pid"] for said in workers}
    assert [(os.stat(path).st_uid, stat.S_IMODE(os.stat(path).st_mode))
            for path in (pid_file, control, unix)] == [(0, 0o640), (0, 0o600), (0, 0o750)]
    stop(a)


def test_numeric_ids_and_a_group_that_is_not_the_users(app):
    nobody = serving_as("nobody")
    other = next(g.gr_gid for g in sorted(grp.getgrall(), key=lambda g: g.gr_gid)
                 if g.gr_gid not in (0, nobody.pw_gid))
    umask = os.umask(0)
    os.umask(umask)
    a, port = cli(app, "--user", str(nobody.pw_uid), "--group", str(other))
    serving(a)
    for said in identities(port):
        assert seen_as(said) == expected(nobody, other)
        assert said["umask"] == umask                    # the primary's, unchanged
    stop(a)


@pytest.mark.parametrize("preload", [False, True])
def test_a_user_alone_brings_its_primary_group_and_its_groups(app, user_with_groups, preload):
    user = user_with_groups
    a, port = cli(app, "--user", user.pw_name, *(["--preload"] if preload else []))
    serving(a)
    for said in identities(port):
        assert seen_as(said) == expected(user, user.pw_gid)
        assert len(said["groups"]) > 1
    stop(a)


@pytest.mark.parametrize("sched", ["rr", "none"])
def test_root_binds_a_port_below_1024_and_nobody_serves_it(app, sched):
    nobody = serving_as("nobody")
    workers = 2 if sched == "rr" else 1      # SCHED_NONE: whichever worker accepts
    a, port = cli(app, "--user", "nobody", "--sched", sched, port=privileged_port(),
                  workers=workers)
    serving(a, workers)
    for said in identities(port, workers):
        assert said["uid"] == said["euid"] == nobody.pw_uid
    assert uid_of(a.pid) == [0, 0]
    stop(a)


def test_the_log_files_are_given_to_the_workers_user(app):
    """gunicorn's rule: the primary (root) makes --access-logfile and
    --error-logfile and gives them to the workers' user, which appends to
    them (its access lines, and its errors: its handler opens the file at
    its start, or it could not boot)."""
    nobody, nogroup = serving_as("nobody"), group_named("nogroup")
    logs = Path(tempfile.mkdtemp())
    logs.chmod(0o755)                       # the workers reach their files; root's tmp_path is 0700
    try:
        access, errors = logs / "access.log", logs / "error.log"
        a, port = cli(app, "--user", "nobody", "--group", "nogroup", "--access-logfile",
                      str(access), "--error-logfile", str(errors), "--access-log-format",
                      "%(U)s %(p)s")
        found_in(errors, "ready: 2 workers")          # the primary's lines are there too
        workers = {said["pid"] for said in identities(port)}
        assert {f"/ <{pid}>" for pid in workers} <= set(found_in(access, "^/ ", count=2))
        assert [(os.stat(path).st_uid, os.stat(path).st_gid) for path in (access, errors)] == \
            [(nobody.pw_uid, nogroup.gr_gid)] * 2
        stop(a)
    finally:
        shutil.rmtree(logs)


# ---- what cannot be done: one line, exit 2, before any fork ------------------------------

def refused(app, *options, run_as=(CLI,)):
    """The one line a refused command line writes (stderr), after checking
    that it exited 2 and forked nothing."""
    a, _ = cli(app, *options, run_as=run_as)
    lines = a.finish(code=2)
    assert len(lines) == 1, lines
    return lines[0]


def unknown_uid():
    taken = {user.pw_uid for user in pwd.getpwall()}
    return next(uid for uid in range(2_000_000_000, 2_000_001_000) if uid not in taken)


@pytest.mark.parametrize("options, line", [
    (["--user", "no-such-user-here"], "argument --user: no such user: 'no-such-user-here'"),
    (["--group", "no-such-group"], "argument --group: no such group: 'no-such-group'"),
    (["--user", "4294967296"], "argument --user: an id is at most 2147483647, not 4294967296"),
    (["--umask", "999"], "argument --umask: not an octal mode from 000 to 777 (such as 027): "
                         "'999'"),
    (["--umask", "0o1000"], "argument --umask: not an octal mode from 000 to 777 (such as "
                            "027): '0o1000'"),
    (["--umask", "u=rwx"], "argument --umask: not an octal mode from 000 to 777 (such as "
                           "027): 'u=rwx'"),
    (["--user", "UNKNOWN"], "argument --user: uid UNKNOWN has no user in the password "
                            "database: give --group too"),
])
def test_a_bad_value_is_one_line_and_exit_2(app, options, line):
    uid = str(unknown_uid())
    options = [uid if word == "UNKNOWN" else word for word in options]
    assert refused(app, *options) == f"cluster-ext run: error: {line.replace('UNKNOWN', uid)}"


def test_octal_umasks_in_every_spelling_and_the_help(app):
    for spelling in ("027", "0027", "0o027", "27"):
        a, port = cli(app, "--umask", spelling, workers=1)
        serving(a, 1)
        assert identities(port, 1)[0]["umask"] == 0o027
        stop(a)
    text = subprocess.run([CLI, "run", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert all(flag in text for flag in ("--user USER", "--group GROUP", "--umask MODE"))


def test_a_primary_that_is_not_root_cannot_switch_but_may_name_itself(app):
    """The primary runs as nobody: another user or group is refused before
    any fork (a worker would fail its setuid() at every fork); its own user
    serves."""
    nobody = serving_as("nobody")
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv to start the primary as nobody")
    as_nobody = {"run_as": ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                            "--clear-groups", CLI]}
    assert refused(app, "--user", "root", **as_nobody) == (
        "cluster-ext run: error: argument --user: the workers cannot become uid 0: that "
        f"needs root's CAP_SETUID, which this primary (uid {nobody.pw_uid}) lacks")
    assert refused(app, "--group", "0", **as_nobody) == (
        "cluster-ext run: error: argument --group: the workers cannot take gid 0: that "
        f"needs root's CAP_SETGID, which this primary (uid {nobody.pw_uid}) lacks")
    a, port = cli(app, "--user", "nobody", **as_nobody)
    serving(a)
    for said in identities(port):
        assert said["uid"] == nobody.pw_uid and said["gid"] == nobody.pw_gid
    stop(a)


@pytest.mark.parametrize("preload", [False, True])
def test_an_interpreter_the_user_cannot_run_is_one_line(app, tmp_path, preload):
    """The interpreter behind a directory only root may enter (as pyenv's
    under /root): the first worker, or the template, cannot be exec'd as
    nobody; said in one line, exit 2, not a traceback."""
    if os.geteuid() != 0:
        pytest.skip("only root can serve as another user")
    if sys.prefix == sys.base_prefix:
        pytest.skip("the interpreter is hidden as a copy of this venv: it needs one")
    hidden = tmp_path / "root-only"                  # pytest's tmp_path: mode 0700
    (hidden / "bin").mkdir(parents=True)
    shutil.copy(Path(sys.prefix, "pyvenv.cfg"), hidden)
    (hidden / "lib").symlink_to(Path(sys.prefix, "lib"))
    python = hidden / "bin" / "python"
    python.symlink_to(os.path.realpath(sys.executable))
    a, _ = cli(app, "--user", "nobody", *(["--preload"] if preload else []),
               run_as=[str(python), "-m", "cluster_ext"])
    text = "\n".join(a.finish(code=2))
    assert text.count("\n") <= 1 and "Traceback" not in text, text      # the start, then this
    assert text.endswith(f"cannot start: the workers cannot run {python} as uid "
                         f"{pwd.getpwnam('nobody').pw_uid}: Permission denied (they must be "
                         "able to run the interpreter and read the application)"), text
