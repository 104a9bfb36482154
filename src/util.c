/* util.c: small helpers shared by the engine files (cx.h). No Python, no
   descriptors of its own. */
#include "cx.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

void
cx_close(int *fdp)
{
    /* Never retried: Linux frees the fd even when close() reports EINTR. */
    if (*fdp >= 0) {
        int saved = errno, fd = *fdp;
        /* Nothing the engine owns is stdio: closing 0-2 means an fd field
           left zero-filled, or a number closed twice and reused (libuv's
           check; on in sanitizer builds, which drop NDEBUG). */
        assert(fd > STDERR_FILENO);
        *fdp = -1;
        (void)close(fd);
        errno = saved;
    }
}

int
cx_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int
cx_fd_above_stdio(int fd)
{
    int moved;

    if (fd > 2) {
        return fd;
    }
    moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    moved = moved < 0 ? -errno : moved;
    (void)close(fd);            /* the one stdio number the engine closes */
    return moved;
}

int
cx_grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    size_t n = *cap ? *cap : 16;
    void *grown;

    if (need <= *cap) {
        return 0;
    }
    while (n < need) {
        n *= 2;
    }
    grown = realloc(*buf, n * elem);
    if (grown == NULL) {
        return -ENOMEM;
    }
    *buf = grown;
    *cap = n;
    return 0;
}

uint64_t
cx_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void
cx_debug(const char *fmt, ...)
{
    static int enabled = -1;
    va_list ap;

    if (enabled < 0) {
        const char *v = getenv("CLUSTER_EXT_DEBUG");
        enabled = v != NULL && v[0] == '1';
    }
    if (!enabled) {
        return;
    }
    va_start(ap, fmt);
    fprintf(stderr, "cluster_ext[%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
