"""A worker is the program run alone: every way the package starts one gives
the worker what the same program sees when it is run by itself in the same
conditions (conform_probe.py's facts, equal whole), and fork(target=) gives
it the same process (environment, identity, signals, limits, descriptors,
engine settings) as an exec'd one. Then: how a worker ends, and the
identity it takes."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import zipapp

import pytest

from conftest import APPS

PROBE = APPS / "conform_probe.py"
ARGS = ["one", "two"]


def specs(tmp_path):
    """The ways to name the program: (argv after the interpreter, cwd)."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(PROBE, app / "__main__.py")
    zipapp.create_archive(app, tmp_path / "app.pyz")
    mod = tmp_path / "mod"
    mod.mkdir()
    shutil.copy(PROBE, mod / "conform_probe.py")
    return {
        "script": ([str(PROBE)], tmp_path),
        "directory": ([str(app)], tmp_path),
        "zipapp": ([str(tmp_path / "app.pyz")], tmp_path),
        "module": (["-m", "conform_probe"], mod),
        "code": (["-c", PROBE.read_text()], tmp_path),
    }


def as_the_primary_leaves_it():
    """What a worker inherits from conform_probe's primary, for a process
    started alone: SIGUSR1 ignored, one step nicer, fewer descriptors."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.nice(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1000), hard))


def base_env(how, **more):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_EXT_", "PROBE_"))}
    env.update(PROBE_HOW=how, **more)
    return env


def run(argv, cwd, env, preexec=None):
    def start():
        # every signal at its default, whatever started the suite (nohup
        # ignores SIGHUP, a script's background job SIGINT, and Python
        # keeps an ignored disposition)
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
        if preexec is not None:
            preexec()

    done = subprocess.run([sys.executable, *argv, *ARGS], cwd=cwd, env=env, timeout=30,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          preexec_fn=start)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def worker_facts(argv, cwd, how, **settings):
    out = run(argv, cwd, base_env(how, PROBE_SETTINGS=json.dumps(settings)))
    assert out["exit"] == [0, None], out
    return out["worker"]


def alone_facts(argv, cwd, **settings):
    # the worker's environment: the primary's, what it set, then fork(env)
    env = base_env("exec", PROBE_SETTINGS=json.dumps(settings), PROBE_PRIMARY="1",
                   PROBE_EXTRA="yes", CLUSTER_EXT_SPIN_US="7")
    return run(argv, cwd, env, as_the_primary_leaves_it)


@pytest.mark.timeout(90)
def test_an_execd_worker_sees_what_the_program_run_alone_sees(tmp_path):
    ways = {name: (argv, cwd, {}) for name, (argv, cwd) in specs(tmp_path).items()}
    # the exec setting: a primary run as -c code names the script its workers run
    ways["exec setting"] = (["-c", PROBE.read_text()], tmp_path, {"exec": str(PROBE)})
    for name, (argv, cwd, settings) in ways.items():
        worker = worker_facts(argv, cwd, "exec", **settings)
        alone = alone_facts([str(PROBE)] if settings else argv, cwd, **settings)
        assert worker.pop("sigint") == "SIG_IGN", name    # the primary's to act on
        assert alone.pop("sigint") == "default_int_handler", name
        assert worker == alone, name
        assert worker["main"]["annotation"] == "<class 'int'>", name
        assert worker["main"]["builtins"] == "module", name
        assert worker["argv"][1:] == ARGS, name
        process = worker["process"]
        assert process["engine"] == {"spin_us": 7}, name
        assert process["mask"] == [], name
        assert process["signals"]["SIGTERM"] == process["signals"]["SIGHUP"] == \
            "SIG_DFL", name
        assert process["signals"]["SIGUSR1"] == "SIG_IGN", name
        assert not any(k.startswith("CLUSTER_EXT_") and k != "CLUSTER_EXT_SPIN_US"
                       for k, _ in process["env"]), name


def test_a_target_worker_is_the_same_process_as_an_execd_one(tmp_path):
    argv, cwd = specs(tmp_path)["script"]
    execd, target = worker_facts(argv, cwd, "exec"), worker_facts(argv, cwd, "target")
    assert target["sigint"] == execd["sigint"] == "SIG_IGN"
    # the environment differs by the one variable that names the mechanism
    for facts in (execd, target):
        facts["process"]["env"].remove(["PROBE_HOW", "target" if facts is target else "exec"])
    assert target["process"] == execd["process"]


def unbuffered_off():
    """The environment as a user has it: PYTHONUNBUFFERED (set on this
    machine) would flush what the exit must flush."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def artifacts(folder):
    """Every file the ends left, with what it holds (a gzip file: whether
    it is whole)."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".gz":
            import gzip
            try:
                found[path.name] = len(gzip.decompress(path.read_bytes()))
            except (EOFError, OSError) as exc:
                found[path.name] = repr(exc)
        elif ".tmp." in path.name:
            found[path.name.split(".tmp.")[0] + ".tmp"] = "left behind"
        else:
            found[path.name] = path.read_text()
    return found


def test_a_disconnected_worker_unwinds_and_ends_as_python_ends_its_script(tmp_path):
    script = str(APPS / "exit_faithful.py")
    workers, alone = tmp_path / "workers", tmp_path / "alone"
    workers.mkdir()
    alone.mkdir()
    done = subprocess.run([sys.executable, script, str(workers)], capture_output=True,
                          text=True, timeout=30, env=unbuffered_off())
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout.splitlines()[-1])
    outputs = {}
    for end, (code, sig) in codes.items():
        by_itself = subprocess.run([sys.executable, script, str(alone)], capture_output=True,
                                   text=True, timeout=30,
                                   env={**unbuffered_off(), "PROBE_ALONE": "1",
                                        "PROBE_END": end})
        assert [by_itself.returncode, None] == [code, sig], (end, by_itself.stderr)
        outputs[end] = by_itself.stdout
    assert codes == {"return": [0, None], "exit7": [7, None], "raise": [1, None],
                     "closed": [0, None], "frozen": [0, None], "clean": [0, None]}
    # every file, finalizer and flush as the script alone leaves them: the
    # worker that leaves finalizers behind exits through the teardown
    left, expected = artifacts(workers), artifacts(alone)
    # the one that leaves only output skips the teardown (nothing for it to
    # run: the audit hook is its only witness) and loses none of it
    assert expected.pop("clean.teardown") == ""
    assert left == expected
    assert left["return.with"] == "after run" and left["return.gz"] == 7000
    assert "return.tmp" not in left and left["return.cycle"] == "unclosed " * 1000
    assert all(f"{end}.{what}" in left for end in codes if end not in ("clean", "frozen")
               for what in ("finally", "atexit", "generator", "del")), left
    lines = done.stdout.splitlines()
    assert lines.count("printf from C") == 5                 # C's stdio, flushed at every end
    assert all("printf from C" in out for end, out in outputs.items() if end != "clean")
    assert "clean end" in lines and "clean printf from C" in lines
    assert outputs["clean"].splitlines() == ["clean end", "clean printf from C"]
    assert done.stderr.splitlines()[-1] == "LookupError: after run", done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can take another identity")
@pytest.mark.parametrize("how", ["exec", "target"])
def test_a_worker_drops_every_privilege_it_is_asked_to(how):
    """A primary with root's groups: the worker keeps none of them."""
    import grp
    import pwd
    nobody = pwd.getpwuid(65534)
    others = sorted({g.gr_gid for g in grp.getgrall()} - {0, 65534})[:2] or [1]

    def ids(**settings):
        done = subprocess.run([sys.executable, str(APPS / "prim_ids.py"), how,
                               json.dumps(settings)], capture_output=True, text=True,
                              timeout=30, extra_groups=[0, *others])
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
        assert out["exit"] == [0, None], out
        return out["ids"]

    users_groups = sorted(set(os.getgrouplist(nobody.pw_name, nobody.pw_gid)))
    assert ids(uid=65534, gid=65534) == [65534, 65534, sorted(set(os.getgrouplist(
        nobody.pw_name, 65534)))]
    # a uid alone brings its user's primary group too, not root's gid 0
    assert ids(uid=65534) == [65534, nobody.pw_gid, users_groups]
    # a gid alone clears the supplementary groups (id -G lists the gid itself)
    assert ids(gid=65534) == [0, 65534, [] if how == "target" else [65534]]


def test_a_target_worker_starts_as_the_execd_one_fails_or_starts(tmp_path):
    path = tmp_path / "held"
    done = subprocess.run([sys.executable, str(APPS / "target_setup.py"), str(path)],
                          capture_output=True, text=True, timeout=30, env=unbuffered_off())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    out = json.loads(lines[-2])
    assert out == {"raised": ["FileNotFoundError", 2],
                   "after_failure": {"workers": 0, "children": []},
                   "cwd": "/", "exit": [0, None]}, out
    # the primary's unflushed line, file and atexit handler: once each
    assert lines.count("primary line") == 1 and lines[-1] == "primary atexit", lines
    assert path.read_text() == "once"


def test_combined_interpreter_options_name_the_same_module(tmp_path):
    """python -Bm mod: the worker runs mod too (-B's m takes the next argument)."""
    argv, cwd = specs(tmp_path)["module"]
    execd = run(["-B", *argv], cwd, base_env("exec"))["worker"]
    combined = run(["-Bm", argv[1]], cwd, base_env("exec"))["worker"]
    assert combined["main"] == execd["main"] and combined["argv"] == execd["argv"]
    assert combined["orig_argv"][1:3] == ["-Bm", "conform_probe"]


def test_a_primary_that_may_not_set_groups_keeps_its_own(monkeypatch):
    """Not root: naming its own uid and gid changes nothing (its groups are
    its user's); root: the user's groups."""
    from cluster_ext import _primary
    uid, gid = os.getuid(), os.getgid()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _primary.worker_identity(uid, gid) == (None, gid, uid)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert _primary.worker_identity(None, gid) == ([], gid, -1)
