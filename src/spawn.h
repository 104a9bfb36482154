/* spawn.h: fork + exec of a worker. Everything the child needs is built by
   the parent before fork(); the child path is async-signal-safe. */
#ifndef CX_SPAWN_H
#define CX_SPAWN_H

#include <sys/types.h>

typedef struct cx_spawn_plan {
    const char *path;          /* absolute: no PATH search in the child */
    char *const *argv;
    char *const *envp;
    const char *cwd;           /* NULL: the parent's */
    int chan_fd;               /* the fd the worker inherits (>= 3) */
    int keep_fd;               /* and a second one (>= 3), or -1 */
    int stdio[3];              /* fd (>= 3) for 0, 1, 2; -1 inherits */
    const gid_t *groups;       /* supplementary groups, set when ngroups >= 0 */
    int ngroups;
    int uid, gid;              /* -1: unchanged */
    int failed_in_parent;      /* out: set when pipe2() or fork() failed */
} cx_spawn_plan;

/* Exit status of a child that found its parent gone before it could set the
   parent-death signal. */
#define CX_EXIT_ORPHANED 0

/* Returns the pid, or -errno: an exec failure comes back through a
   close-on-exec error pipe and the child is reaped. Blocks until the child
   has exec'ed: call it without the GIL. */
pid_t cx_spawn(cx_spawn_plan *plan);
/* Takes on an identity, in the only order that drops it whole: the
   supplementary groups (when ngroups >= 0), then gid, then uid (-1: leave
   it). Any failure is the caller's to report: nothing is half taken
   silently. Async-signal-safe in a fork()ed child (not under vfork or
   CLONE_VM: setgroups() and setuid() reach every thread through glibc's
   setxid signal). Returns 0, or -errno. */
int cx_set_ids(const gid_t *groups, int ngroups, int gid, int uid);
/* For a child made by fork() without exec: die with the parent, like an
   exec'ed worker. Returns 0, or -errno. */
int cx_spawn_die_with_parent(pid_t parent);
/* Whether orphans are reparented to this process: it is PID 1 of its pid
   namespace, or a child subreaper. Returns 1 or 0, or -errno. */
int cx_spawn_inherits_orphans(void);
/* This process becomes a child subreaper: orphans below it are its own. */
int cx_spawn_become_subreaper(void);

#endif
