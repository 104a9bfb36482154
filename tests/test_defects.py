"""Regressions of defects found in review, each proved through a real process
(or, for an engine path that Python cannot reach, a small C program)."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import only_json, run_app

SRC = Path(__file__).resolve().parent.parent / "src"


def run_python(code: str, timeout: float = 30.0) -> dict:
    """Runs code as a program of its own (its own session, so that a kill takes
    its workers too) and returns the one JSON line it prints."""
    # -c from the tests' directory: the root's own unbuilt tree would come first
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            cwd=Path(__file__).parent)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"no exit after {timeout}s\n{err.decode()}")
    assert proc.returncode == 0, err.decode()
    return only_json(out.decode().splitlines())


def run_c(tmp_path: Path, code: str, *link_flags: str) -> dict:
    """Compiles code with the engine's loop (loop.c, util.c: no Python), runs
    it and returns the one JSON line it prints."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    exe = tmp_path / "harness"
    (tmp_path / "harness.c").write_text(code)
    r = subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", f"-I{SRC}",
                        str(tmp_path / "harness.c"), str(SRC / "loop.c"), str(SRC / "util.c"),
                        "-o", str(exe), *link_flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return only_json(r.stdout.splitlines())


def test_a_constructor_out_of_memory_crashes_nothing_and_keeps_stdin():
    # Balancer: a failed list allocation ran dealloc over an engine struct
    # that was never set up (fd 0, no forget function).
    result = only_json(run_app("defect_ctor_nomem.py"))
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["stdin_intact"], result
    assert result["memory_errors"]["Balancer"] >= 2, result   # the object, then its list
    assert result["left_open"] == [], result                  # owned even on failure


# The primary turns its loop by hand (_core.turn with a timeout) so that every
# wait has a deadline of epoll_wait's own, which holds even when its timers do
# not. A fork hook holds the child back until the primary has armed its
# timerfd again for the 'fork' event, so the child's forgetting always comes
# after it.
FORK_IN_BACKOFF = r'''
import json, os, resource, socket, time
import cluster_ext as cluster
from cluster_ext import _core, net

def turn_until(done, seconds):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        _core.turn(0.05)
    return done()

seen = {"listening": 0, "accepted": 0, "online": 0, "fired": 0, "exit": 0}
def mark(what):
    return lambda *args: seen.__setitem__(what, 1)

server = net.create_server(lambda sock: (mark("accepted")(), sock.destroy()))
server.listen(0, "127.0.0.1", callback=mark("listening"))
assert turn_until(lambda: seen["listening"], 10)

# Python has no timer now: the timerfd is armed only for the listener's retry.
timerfd = next(int(n) for n in os.listdir("/proc/self/fd")
               if os.readlink(f"/proc/self/fd/{n}") == "anon_inode:[timerfd]")
fdinfo = os.open(f"/proc/self/fdinfo/{timerfd}", os.O_RDONLY)
def backing_off():
    return b"it_value: (0, 0)" not in os.pread(fdinfo, 4096, 0)

client = socket.socket()
client.setblocking(False)
limits = resource.getrlimit(resource.RLIMIT_NOFILE)
lowest_free = os.dup(0)
os.close(lowest_free)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
client.connect_ex(server.address())          # accept4 fails: EMFILE
assert turn_until(backing_off, 10)
resource.setrlimit(resource.RLIMIT_NOFILE, limits)

gate_r, gate_w = os.pipe()
os.register_at_fork(after_in_child=lambda: (os.close(gate_w), os.read(gate_r, 1)))
w = cluster.fork(target=lambda: None)        # while the retry timer is armed
w.on("online", mark("online"))
w.on("exit", mark("exit"))
os.write(gate_w, b"go")
assert turn_until(lambda: seen["online"], 10)   # the child has forgotten its loop
cluster.call_later(0.1, mark("fired"))
turn_until(lambda: seen["fired"] and seen["accepted"], 3)
w.kill("SIGKILL")
turn_until(lambda: seen["exit"], 10)
print(json.dumps(seen), flush=True)
'''


def test_b_a_worker_forked_during_an_accept_backoff_leaves_the_primarys_timers_alone():
    # The child's forget of the listener stopped its retry timer, which re-armed
    # the timerfd the child still shared with the primary (disarmed it): the
    # primary's retry never came, and no later timer of its fired.
    seen = run_python(FORK_IN_BACKOFF)
    assert seen["exit"], seen
    assert seen["fired"], seen                # a timer of the primary's fires
    assert seen["accepted"], seen             # the retry came: the client is served


# Two timers fire in one turn; the first one's callback raises, so turn()
# raises (asyncio's exception handler gets it) with the second one's note
# still queued. No other descriptor of the engine's will ever be readable.
RAISE_UNDER_ASYNCIO = r'''
import asyncio, json
import cluster_ext as cluster
from cluster_ext import aio

async def main():
    loop = asyncio.get_running_loop()
    raised, second = [], loop.create_future()
    loop.set_exception_handler(lambda loop, context: raised.append(
        repr(context.get("exception"))))
    aio.attach()

    def first():
        raise ValueError("from the first callback")

    cluster.call_later(0, first)
    cluster.call_later(0, lambda: second.set_result("delivered"))
    try:
        result = await asyncio.wait_for(second, 5)
    except asyncio.TimeoutError:
        result = "still queued"
    print(json.dumps({"raised": raised, "second": result}), flush=True)

asyncio.run(main())
'''


def test_c_notes_left_by_a_raising_callback_reach_asyncio():
    # turn() stopped at the exception with the other note queued, and nothing
    # made the engine's descriptor readable again: under aio.attach() the
    # note waited for unrelated I/O (here: forever).
    result = run_python(RAISE_UNDER_ASYNCIO)
    assert result["raised"] == ["ValueError('from the first callback')"], result
    assert result["second"] == "delivered", result


SPAWN_KEEPS_ITS_ARGUMENTS = r'''
import json, os, shutil
from cluster_ext import _core

true = shutil.which("true")
argv, envp = [true, "one"], ["A=1"]
ours, theirs = _core.socketpair()
pid = _core.spawn(true, argv, envp, None, theirs, (-1, -1, -1), None, -1, -1)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps({"argv": repr(argv), "envp": repr(envp), "expected": repr([true, "one"]),
                  "code": code}), flush=True)
'''


def test_d_spawn_leaves_the_callers_lists_alone():
    # cstring_array() stored the encoded bytes back into the list it was
    # given (PySequence_Fast returns a list itself): spawn() turned the
    # caller's argv and envp into lists of bytes.
    result = run_python(SPAWN_KEEPS_ITS_ARGUMENTS)
    assert result["code"] == 0, result
    assert result["argv"] == result["expected"], result
    assert result["envp"] == "['A=1']", result


# The worker is grep(1), exec'd by the primary as any program could be: it
# prints the set of signals it was started with ignored.
SIGNALS_OF_AN_EXEC_WORKER = r'''
import json, shutil
import cluster_ext as cluster

cluster.setup_primary(exec=[shutil.which("grep"), "^SigIgn:", "/proc/self/status"],
                      args=[], silent=True)
w = cluster.fork()
out = []
w.process.stdout.on("data", out.append)
cluster.run()
with open("/proc/self/status") as f:
    primary = next(line for line in f if line.startswith("SigIgn:"))
print(json.dumps({"worker": int(b"".join(out).split()[1], 16),
                  "primary": int(primary.split()[1], 16)}), flush=True)
'''


def test_f_an_exec_worker_starts_with_sigpipe_and_sigxfsz_at_their_defaults():
    # Python ignores SIGPIPE and SIGXFSZ for itself; spawn() kept every
    # ignored signal ignored, so an exec'd program inherited them (a
    # pipeline's writer never died of SIGPIPE). subprocess resets them
    # (restore_signals=True).
    result = run_python(SIGNALS_OF_AN_EXEC_WORKER)
    bits = 1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)
    assert result["primary"] & bits == bits, result     # what the worker could inherit
    assert result["worker"] & bits == 0, result


# A watcher is started, then started with no events, while its pipe's write
# end closes (epoll reports EPOLLHUP even for a descriptor that wants
# nothing), then started again.
IO_START_WITH_NO_EVENTS = r"""
#include "loop.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static int calls;

static void
readable(cx_loop *loop, cx_io *io, uint32_t events)
{
    (void)loop, (void)io, (void)events;
    calls++;
}

int
main(void)
{
    cx_loop loop = {0};
    cx_io io = {0};
    int p[2], stop, restart;

    if (cx_loop_init(&loop) < 0 || pipe2(p, O_CLOEXEC) < 0) {
        return 2;
    }
    io.fd = p[0];
    io.cb = readable;
    if (cx_io_start(&loop, &io, EPOLLIN) < 0) {
        return 3;
    }
    stop = cx_io_start(&loop, &io, 0);
    close(p[1]);
    cx_loop_turn(&loop, 0);
    printf("{\"stop\": %d, \"calls_while_stopped\": %d, ", stop, calls);
    restart = cx_io_start(&loop, &io, EPOLLIN);
    printf("\"restart\": %d}\n", restart);
    cx_io_stop(&loop, &io);
    close(p[0]);
    cx_loop_close(&loop);
    return 0;
}
"""


def test_g_io_start_with_no_events_stops_the_watcher(tmp_path):
    # cx_io_start(io, 0) on a registered watcher did EPOLL_CTL_MOD with no
    # events and marked it stopped while it stayed in the epoll set and in
    # the watcher table: its hang-up still reached the callback, and the
    # next start did EPOLL_CTL_ADD and failed with EEXIST.
    result = run_c(tmp_path, IO_START_WITH_NO_EVENTS)
    assert result == {"stop": 0, "calls_while_stopped": 0, "restart": 0}, result


# epoll_create1() fails with ENOMEM; the two calls after it succeed but, as
# POSIX allows a successful call to, leave errno changed (here 0). Linked
# with --wrap, so that loop.c's calls reach these.
INIT_ERRNO = r"""
#include "loop.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int __real_timerfd_create(int clockid, int flags);
int __real_eventfd(unsigned int count, int flags);
int __wrap_epoll_create1(int flags);
int __wrap_timerfd_create(int clockid, int flags);
int __wrap_eventfd(unsigned int count, int flags);

int
__wrap_epoll_create1(int flags)
{
    (void)flags;
    errno = ENOMEM;
    return -1;
}

int
__wrap_timerfd_create(int clockid, int flags)
{
    int fd = __real_timerfd_create(clockid, flags);
    errno = 0;
    return fd;
}

int
__wrap_eventfd(unsigned int count, int flags)
{
    int fd = __real_eventfd(count, flags);
    errno = 0;
    return fd;
}

static int
lowest_free_fd(void)
{
    int fd = dup(0);
    close(fd);
    return fd;
}

int
main(void)
{
    cx_loop loop = {0};
    int before = lowest_free_fd(), r = cx_loop_init(&loop);

    printf("{\"init\": %d, \"enomem\": %d, \"fds_left\": %d}\n", r, -ENOMEM,
           lowest_free_fd() - before);
    return 0;
}
"""


def test_h_a_failed_loop_init_reports_the_errno_of_the_call_that_failed(tmp_path):
    # cx_loop_init() made all three calls and read errno after the last: a
    # later call's errno replaced the failed one's (here 0, so the failed
    # init returned success with no epoll fd).
    result = run_c(tmp_path, INIT_ERRNO, "-Wl,--wrap=epoll_create1,--wrap=timerfd_create,"
                                         "--wrap=eventfd")
    assert result["init"] == result["enomem"], result
    assert result["fds_left"] == 0, result


# The peer writes two frames that carry a descriptor each and a plain one,
# and closes; then the channel is drain-closed, as the primary does when a
# worker has exited. The kernel ends a read after the bytes that carry
# descriptors, even with more queued.
DRAIN_PAST_DESCRIPTORS = r'''
import json, os, socket, struct
from cluster_ext import _core

ours, theirs = socket.socketpair()
frames, events = [], []

def on_frame(frame_type, flags, payload, fds):
    frames.append([payload.decode(), len(fds)])
    for fd in fds:
        os.close(fd)

chan = _core.Channel(ours.detach(), on_frame, lambda kind, err: events.append([kind, err]),
                     1 << 20, 1 << 16)

def frame(payload, nfds=0):
    return struct.pack("=IBBH", len(payload), _core.FRAME_USER, nfds, 0) + payload

null = os.open("/dev/null", os.O_RDONLY)
socket.send_fds(theirs, [frame(b'"one"', 1)], [null])
socket.send_fds(theirs, [frame(b'"two"', 1)], [null])
theirs.sendall(frame(b'"three"'))
theirs.close()
os.close(null)
chan.drain_close()
for _ in range(10):
    _core.turn(0)
print(json.dumps({"frames": frames, "events": events, "closed": chan.closed,
                  "close": _core.EVENT_CLOSE}), flush=True)
'''


def test_i_a_drain_close_reads_past_frames_that_carry_descriptors():
    # read_some() took any short read for a drained socket; but a read ends
    # after the bytes that carry descriptors, with more queued. A drain-close
    # (a worker's exit) stopped there and dropped the frames after it: here
    # "two" and "three". Found by fuzz/frames_libfuzzer.c
    # (fuzz/corpus/frames_libfuzzer/regress-drain-close-stops-at-fds.bin).
    result = run_python(DRAIN_PAST_DESCRIPTORS)
    assert result["frames"] == [['"one"', 1], ['"two"', 1], ['"three"', 0]], result
    assert result["events"] == [[result["close"], 0]], result
    assert result["closed"] is True, result
