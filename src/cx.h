/* cx.h: the engine's shared basics: descriptor closing, the intrusive list,
   array growth, error conventions. No Python.h here or in any engine file:
   only the glue (module.c, glue.c, py_*.c) sees Python objects.
   Engine functions return 0 (or a count) on success and -errno on failure. */
#ifndef CX_H
#define CX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CX_UNUSED(x) ((void)(x))
#define cx_container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

/* Doubly linked intrusive list with a sentinel head. */
typedef struct cx_list {
    struct cx_list *prev, *next;
} cx_list;

static inline void
cx_list_init(cx_list *head)
{
    head->prev = head->next = head;
}

static inline int
cx_list_empty(const cx_list *head)
{
    return head->next == head;
}

static inline void
cx_list_push(cx_list *head, cx_list *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

static inline void
cx_list_remove(cx_list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = node;
}

/* Closes *fdp once and sets it to -1; keeps errno. Asserts that *fdp is not
   stdio (0-2) where asserts are on (CX_SANITIZE=1 builds). */
void cx_close(int *fdp);
/* Writes all of buf, retrying EINTR; returns 0 or -errno. */
int cx_write_all(int fd, const void *buf, size_t len);
/* Moves fd to a number >= 3 (close-on-exec) so that it can never be mistaken
   for stdio; takes ownership of fd, even on failure. Returns the fd or -errno. */
int cx_fd_above_stdio(int fd);
/* Grows *buf (*cap elements of elem bytes) by doubling until need fits;
   returns 0 or -ENOMEM (*buf untouched). */
int cx_grow(void **buf, size_t *cap, size_t need, size_t elem);
uint64_t cx_now_ns(void);
/* stderr lines when CLUSTER_EXT_DEBUG=1; never used on the child path. */
void cx_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
