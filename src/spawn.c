/* spawn.c: starts a worker process (spawn.h). Owns the error pipe for the
   duration of cx_spawn(). Between fork() and execve() only async-signal-safe
   calls are made (signal-safety(7)): no malloc, no stdio, no locks, no Python. */
#include "spawn.h"
#include "cx.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static _Noreturn void
spawn_child(const cx_spawn_plan *p, pid_t parent, int errpipe_w)
{
    static const struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigset_t none;
    int err;

    /* The only fds the worker inherits: their numbers travel in the
       environment, so there is no dup2() (onto itself it would keep
       CLOEXEC). The parent made sure they are not 0, 1 or 2. */
    if (fcntl(p->chan_fd, F_SETFD, 0) < 0 ||
        (p->keep_fd >= 0 && fcntl(p->keep_fd, F_SETFD, 0) < 0)) {
        goto fail;
    }
    for (int i = 0; i < 3; i++) {
        if (p->stdio[i] >= 0 && dup2(p->stdio[i], i) < 0) {
            goto fail;
        }
    }
    if (p->cwd != NULL && chdir(p->cwd) < 0) {
        goto fail;
    }
    if ((err = cx_set_ids(p->groups, p->ngroups, p->gid, p->uid)) < 0) {
        errno = -err;
        goto fail;
    }
    /* After the ids: a change of credentials clears the parent-death
       signal. */
    if ((err = cx_spawn_die_with_parent(parent)) < 0) {
        errno = -err;
        goto fail;
    }
    /* A handler inherited from Python would write to the parent's wakeup fd
       and fake a signal over there: restore defaults before unblocking.
       Signals the application ignores stay ignored (nohup), except the two
       Python ignores for itself, which subprocess resets too
       (restore_signals): the program exec'd must get them as from a shell. */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction old;
        if (sig != SIGKILL && sig != SIGSTOP &&
            sigaction(sig, NULL, &old) == 0 &&
            (old.sa_handler != SIG_IGN || sig == SIGPIPE || sig == SIGXFSZ)) {
            (void)sigaction(sig, &dfl, NULL);
        }
    }
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0) {
        goto fail;
    }
    execve(p->path, p->argv, p->envp);
fail:
    err = errno;
    (void)cx_write_all(errpipe_w, &err, sizeof(err));
    _exit(127);
}

int
cx_set_ids(const gid_t *groups, int ngroups, int gid, int uid)
{
    if (ngroups >= 0 && setgroups((size_t)ngroups, groups) < 0) {
        return -errno;
    }
    if (gid >= 0 && setgid((gid_t)gid) < 0) {
        return -errno;
    }
    if (uid >= 0 && setuid((uid_t)uid) < 0) {
        return -errno;
    }
    return 0;
}

int
cx_spawn_die_with_parent(pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
        return -errno;
    }
    if (getppid() != parent) {
        _exit(CX_EXIT_ORPHANED);    /* the parent died before prctl() */
    }
    return 0;
}

int
cx_spawn_inherits_orphans(void)
{
    int subreaper = 0;

    if (getpid() == 1) {
        return 1;
    }
    if (prctl(PR_GET_CHILD_SUBREAPER, &subreaper) < 0) {
        return -errno;
    }
    return subreaper != 0;
}

int
cx_spawn_become_subreaper(void)
{
    return prctl(PR_SET_CHILD_SUBREAPER, 1) < 0 ? -errno : 0;
}

pid_t
cx_spawn(cx_spawn_plan *plan)
{
    int errpipe[2], err = 0;
    sigset_t all, old;
    pid_t parent = getpid(), pid;
    ssize_t n;

    plan->failed_in_parent = 1;
    if (pipe2(errpipe, O_CLOEXEC) < 0) {
        return -errno;
    }
    /* No handler may run in the child before the defaults are back. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid == 0) {
        cx_close(&errpipe[0]);
        spawn_child(plan, parent, errpipe[1]);
    }
    err = pid < 0 ? errno : 0;
    sigprocmask(SIG_SETMASK, &old, NULL);
    cx_close(&errpipe[1]);
    if (pid < 0) {
        cx_close(&errpipe[0]);
        return -err;
    }
    plan->failed_in_parent = 0;
    /* EOF: execve() succeeded and closed the pipe; 4 bytes: an errno. */
    do {
        n = read(errpipe[0], &err, sizeof(err));
    } while (n < 0 && errno == EINTR);
    cx_close(&errpipe[0]);
    if (n == (ssize_t)sizeof(err)) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        return -(err ? err : EIO);
    }
    return pid;
}
