/* frames_libfuzzer.c: a coverage-guided target (libFuzzer's
   LLVMFuzzerTestOneInput, also built for AFL++) for the channel's frame
   decoder with descriptors. Each input is a byte stream and a plan for it:
   which bytes carry stray /dev/null descriptors (SCM_RIGHTS), how the stream
   is cut into writes, and whether the loop reads between them. The stream
   goes through a real socketpair into a cx_chan, read by cx_loop turns until
   the channel closes. It checks what the decoder must hold for any peer:
   the channel always closes; the frames it delivers are exactly the
   stream's frames, in order, byte for byte, each with the descriptors its
   header declares, open and close-on-exec, or, only where the kernel
   truncated descriptors, marked lost (CX_FRAME_LOST) with none; a protocol
   error is EPROTO or EMSGSIZE, and only where the stream (or its
   descriptors) makes one; and no descriptor outlives the input. It owns the socketpair and the test's
   /dev/null descriptor, never touches Python, and is built and run by
   scripts/fuzz_coverage.sh (clang, ASan and UBSan).

   Input: a prefix, then the stream.
     byte 0  bits 0-1  max_frame: 65536, 4096, 64 or 1
             bits 2-4  number of fd attachments that follow (0-7)
             bit 5     a loop turn after each write (reads cut anywhere)
             bit 6     end with cx_chan_drain_close() (the primary's path
                       when a worker exits) instead of turns
             bit 7     with bit 6: drain-close before the peer's end closes
     byte 1  writes: 0 one write; 1-127 that many bytes each; 128-255
             (n - 127) * 512 bytes each; never more than MAX_WRITES
     byte 2  bit 0     complete a last frame that the stream cuts short with
                       copies of byte 3 (a long frame without a long input)
             bit 1     the channel first sends the peer a frame it never
                       reads: its close is then a reset (ECONNRESET), as a
                       worker killed with frames unread
     byte 3  the padding byte
     then 3 bytes per attachment: u16 position (modulo the stream's length),
             u8 count (1 + count % 96: past 64 the kernel truncates)
   The bare streams of fuzz/corpus (*.bin) get the prefix 00 00 00 00
   from the script. */
#include "channel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PREFIX 4
#define MAX_ATTACH 7
#define MAX_STREAM (256 * 1024)
#define MAX_TOTAL (MAX_STREAM + 65536)   /* with a completed last frame */
#define MAX_WRITES 64           /* more only slows the search down */
#define SCM_MAX 200             /* under the kernel's SCM_MAX_FD (253) */
#define MAX_TURNS 100000        /* a channel still open after these: a hang */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cx_loop loop;
static cx_chan ch;
static int devnull = -1;        /* owned: the descriptor sent as a stray */
static DIR *fd_dir;             /* owned: /proc/self/fd, to count fds */
static unsigned char *stream;   /* the stream as sent, for the checks */

typedef struct {
    size_t pos;
    int count;
} attach;

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "frames_libfuzzer: " __VA_ARGS__);               \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

static int
count_fds(void)
{
    int n = 0;

    rewinddir(fd_dir);
    while (readdir(fd_dir) != NULL) {
        n++;
    }
    return n;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    CX_UNUSED(argc);
    CX_UNUSED(argv);
    signal(SIGPIPE, SIG_IGN);
    memset(&loop, 0, sizeof(loop));
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    fd_dir = opendir("/proc/self/fd");
    stream = malloc(MAX_TOTAL);
    if (devnull < 0 || fd_dir == NULL || stream == NULL ||
        cx_loop_init(&loop) < 0) {
        FAIL("cannot set up: %s", strerror(errno));
    }
    return 0;
}

static int
by_pos(const void *x, const void *y)
{
    const attach *a = x, *b = y;

    return (a->pos > b->pos) - (a->pos < b->pos);
}

/* Sends stream[off, end), with n stray fds on its first byte if n > 0.
   Returns the bytes taken, 0 if the socket is full, -1 once the reader is
   gone. */
static ssize_t
send_part(int fd, size_t off, size_t end, int n)
{
    union {
        struct cmsghdr align;
        char b[CMSG_SPACE(sizeof(int) * SCM_MAX)];
    } control;
    struct iovec iov = {stream + off, end - off};
    struct msghdr msg;
    ssize_t r;

    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n > 0) {
        struct cmsghdr *cm;
        int fds[SCM_MAX];
        for (int i = 0; i < n; i++) {
            fds[i] = devnull;   /* the kernel installs one fd per entry */
        }
        msg.msg_control = control.b;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n);
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n);
    }
    do {
        r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN) {
            return 0;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            return -1;
        }
        FAIL("sendmsg: %s", strerror(errno));
    }
    return r;
}

static void
turn(void)
{
    if (cx_loop_turn(&loop, 0) < 0) {
        FAIL("cx_loop_turn: %s", strerror(errno));
    }
}

/* The frames a correct decoder cuts from the whole stream, as offsets;
   *err is the protocol error its headers make (0: none, the tail may be a
   cut frame). */
static size_t
reference(size_t len, size_t max_frame, size_t *offs, size_t cap, int *err,
          size_t *end)
{
    size_t off = 0, n = 0;

    *err = 0;
    while (len - off >= sizeof(cx_frame_header) && n < cap) {
        cx_frame_header hdr;
        memcpy(&hdr, stream + off, sizeof(hdr));
        if (hdr.type == 0 || hdr.type >= CX_FRAME_TYPE_END ||
            (hdr.nfds & ~CX_NFDS_LEAD) > CX_MAX_FDS ||
            hdr.nfds == CX_NFDS_LEAD) {
            *err = EPROTO;
            break;
        }
        if (hdr.len > max_frame) {
            *err = EMSGSIZE;
            break;
        }
        if (len - off - sizeof(hdr) < hdr.len) {
            break;
        }
        offs[n++] = off;
        off += sizeof(hdr) + hdr.len;
    }
    *end = off;
    return n;
}

/* What a frame cut short at the end of the stream lacks, appended as
   copies of byte: returns how many. */
static size_t
cut_short(size_t len, size_t off, size_t max_frame, int byte)
{
    cx_frame_header hdr;

    if (len - off < sizeof(hdr)) {
        return 0;
    }
    memcpy(&hdr, stream + off, sizeof(hdr));
    if (hdr.len > max_frame || len - off - sizeof(hdr) >= hdr.len) {
        return 0;               /* an error, or not cut */
    }
    memset(stream + len, byte, hdr.len - (len - off - sizeof(hdr)));
    return hdr.len - (len - off - sizeof(hdr));
}

/* Descriptors attached at stream positions <= pos. */
static long
attached_upto(const attach *att, int natt, size_t pos)
{
    long n = 0;

    for (int i = 0; i < natt && att[i].pos <= pos; i++) {
        n += att[i].count;
    }
    return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t max_frames[4] = {65536, 4096, 64, 1};
    static size_t offs[MAX_TOTAL / sizeof(cx_frame_header) + 1];
    attach att[MAX_ATTACH];
    int natt, interleave, drain, drain_early, reset, sv[2], err_ref;
    int fds_before, truncating = 0, nerrors = 0, ncloses = 0, err = 0;
    size_t max_frame, chunk, len, tail, sent = 0, nref, nframes = 0;
    long declared = 0, dropped;
    cx_note *note;

    if (size < PREFIX) {
        return 0;
    }
    max_frame = max_frames[data[0] & 3];
    natt = (data[0] >> 2) & 7;
    interleave = (data[0] >> 5) & 1;
    drain = (data[0] >> 6) & 1;
    drain_early = drain && (data[0] >> 7);
    reset = (data[2] >> 1) & 1;
    chunk = data[1] == 0 ? SIZE_MAX
            : data[1] < 128 ? data[1] : (size_t)(data[1] - 127) * 512;
    if (size < PREFIX + 3 * (size_t)natt) {
        return 0;
    }
    len = size - PREFIX - 3 * (size_t)natt;
    if (len > MAX_STREAM) {
        return 0;
    }
    memcpy(stream, data + PREFIX + 3 * natt, len);
    if (data[2] & 1) {
        (void)reference(len, max_frame, offs, sizeof(offs) / sizeof(offs[0]),
                        &err_ref, &tail);
        len += cut_short(len, tail, max_frame, data[3]);
    }
    if (chunk < (len + MAX_WRITES - 1) / MAX_WRITES) {
        chunk = (len + MAX_WRITES - 1) / MAX_WRITES;
    }
    if (len == 0) {
        natt = 0;               /* descriptors travel with a byte */
    }
    for (int i = 0; i < natt; i++) {
        const uint8_t *p = data + PREFIX + 3 * i;
        att[i].pos = (size_t)(p[0] | p[1] << 8) % len;
        att[i].count = 1 + p[2] % 96;
    }
    /* One byte carries one SCM_RIGHTS message: merge attachments there. */
    qsort(att, (size_t)natt, sizeof(att[0]), by_pos);
    if (natt > 0) {
        int j = 0;
        for (int i = 1; i < natt; i++) {
            if (att[i].pos == att[j].pos) {
                att[j].count += att[i].count;
            }
            else {
                att[++j] = att[i];
            }
        }
        natt = j + 1;
    }
    for (int i = 0; i < natt; i++) {
        if (att[i].count > SCM_MAX) {
            att[i].count = SCM_MAX;
        }
        truncating |= att[i].count > CX_BATCH_FDS;
    }

    fds_before = count_fds();
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        FAIL("socketpair: %s", strerror(errno));
    }
    cx_chan_init(&loop, &ch);
    if (cx_chan_open(&ch, sv[0], max_frame, 1 << 16) < 0) {
        FAIL("cx_chan_open: %s", strerror(errno));
    }
    if (reset &&
        cx_chan_send(&ch, CX_FRAME_PING, 0, NULL, 0, NULL, 0, 0) != 1) {
        FAIL("cx_chan_send: the channel did not take a frame");
    }

    /* Writes: cut at every chunk boundary and at every attachment. */
    for (int next = 0, stuck = 0; sent < len;) {
        size_t end = chunk == SIZE_MAX || len - sent <= chunk ? len
                                                              : sent + chunk;
        int n = 0;
        ssize_t r;
        if (next < natt && att[next].pos == sent) {
            n = att[next].count;
        }
        if (next < natt && att[next].pos < sent) {
            FAIL("attachment at %zu passed", att[next].pos);
        }
        if (next + (n > 0) < natt && att[next + (n > 0)].pos < end) {
            end = att[next + (n > 0)].pos;
        }
        r = send_part(sv[1], sent, end, n);
        if (r < 0) {
            break;              /* the channel closed: an error */
        }
        if (r == 0) {           /* full: let the channel read */
            if (ch.fd < 0 || ++stuck == MAX_TURNS) {
                FAIL("the channel stopped reading (%zu bytes sent)", sent);
            }
            turn();
            continue;
        }
        stuck = 0;
        next += n > 0;
        sent += (size_t)r;
        if (interleave) {
            turn();
        }
    }
    if (drain_early) {
        cx_chan_drain_close(&ch);
    }
    cx_close(&sv[1]);
    if (drain) {
        cx_chan_drain_close(&ch);
    }
    for (int t = 0; ch.fd >= 0; t++) {
        if (t == MAX_TURNS) {
            FAIL("the channel never closed (%zu bytes sent)", sent);
        }
        turn();
    }

    /* Every note: the frames against the reference, one error at most,
       one close, last. */
    nref = reference(len, max_frame, offs, sizeof(offs) / sizeof(offs[0]),
                     &err_ref, &tail);
    while ((note = cx_note_pop(&loop)) != NULL) {
        if (note->h == &loop.wake && note->kind == CX_NOTE_WAKE) {
            /* a drain-close made notes outside a turn: the eventfd rang */
            note->h->pending--;
            cx_note_free(note);
            continue;
        }
        if (note->h != &ch.h || ncloses > 0) {
            FAIL("a note of kind %d after the close, or for another handle"
                 " (%p, not %p)", note->kind, (void *)note->h, (void *)&ch.h);
        }
        switch (note->kind) {
        case CX_NOTE_FRAME: {
            cx_frame_header hdr;
            int lost = (note->a & CX_FRAME_LOST) != 0, nfds;
            if (nerrors > 0 || nframes >= nref) {
                FAIL("frame %zu: not in the stream", nframes);
            }
            memcpy(&hdr, stream + offs[nframes], sizeof(hdr));
            nfds = hdr.nfds & ~CX_NFDS_LEAD;
            if ((note->a & ~CX_FRAME_LOST) != hdr.type ||
                note->b != hdr.flags || note->len != hdr.len ||
                note->nfds != (lost ? 0 : nfds) ||
                memcmp(note->data, stream + offs[nframes] + sizeof(hdr),
                       hdr.len) != 0) {
                FAIL("frame %zu differs from the stream's", nframes);
            }
            /* Only the kernel loses descriptors: here, past the 64 that
               the channel's control buffer holds. */
            if (lost && (nfds == 0 || !truncating)) {
                FAIL("frame %zu lost its %d fds, none truncated", nframes,
                     nfds);
            }
            for (int i = 0; i < note->nfds; i++) {
                int fl = fcntl(note->fds[i], F_GETFD);
                if (note->fds[i] <= STDERR_FILENO || fl < 0 ||
                    !(fl & FD_CLOEXEC)) {
                    FAIL("frame %zu: fd %d is not an open close-on-exec fd",
                         nframes, note->fds[i]);
                }
            }
            declared += lost ? 0 : nfds;
            nframes++;
            break;
        }
        case CX_NOTE_ERROR:
            if (nerrors++ > 0 || (note->a != EPROTO && note->a != EMSGSIZE)) {
                FAIL("a second error, or error %d", note->a);
            }
            err = note->a;
            break;
        case CX_NOTE_CLOSE:
            ncloses++;
            if (note->a != err) {
                FAIL("closed with %d after error %d", note->a, err);
            }
            break;
        default:
            FAIL("a note of kind %d from a channel that sends nothing",
                 note->kind);
        }
        note->h->pending--;
        cx_note_free(note);
    }
    if (ncloses != 1 || ch.h.linked || ch.h.pending != 0) {
        FAIL("%d close notes; linked %d, pending %d", ncloses, ch.h.linked,
             ch.h.pending);
    }
    /* Every fd received went to a frame or was closed by the decoder
       (undeclared, or the part that came of a lost frame's). */
    dropped = (long)ch.fds_dropped;
    if (declared + dropped > attached_upto(att, natt, len)) {
        FAIL("frames took %ld fds and %ld were dropped, of %ld sent",
             declared, dropped, attached_upto(att, natt, len));
    }
    /* The outcome the stream makes. The only errors are a bad header after
       the last good frame (the reference's), a frame that declares more fds
       than have come, and, with truncated fds, a frame that lost some in a
       batch its peer did not mark (CX_NFDS_LEAD). Frame k, complete only
       once its last byte is read, sees every fd sent up to that byte and
       none past the read's end; so an EPROTO for it needs its cumulative
       declared count D, with the fds the decoder dropped, above what was
       attached up to its last byte. A frame whose fds were there in time
       must come (lost, if they were truncated). */
    if (err == 0) {
        if (err_ref != 0 || nframes != nref) {
            FAIL("no error, but %zu of %zu frames (error %d, truncating %d)",
                 nframes, nref, err_ref, truncating);
        }
    }
    else if (!(nframes == nref && err == err_ref) && !truncating) {
        cx_frame_header hdr;
        size_t last;
        if (err != EPROTO || nframes == nref) {
            FAIL("error %d after %zu of %zu frames; the stream makes %d",
                 err, nframes, nref, err_ref);
        }
        memcpy(&hdr, stream + offs[nframes], sizeof(hdr));
        last = offs[nframes] + sizeof(hdr) + hdr.len - 1;
        if (declared + dropped + (hdr.nfds & ~CX_NFDS_LEAD) <=
            attached_upto(att, natt, last)) {
            FAIL("EPROTO at frame %zu, whose %ld fds had come", nframes,
                 declared + dropped + (hdr.nfds & ~CX_NFDS_LEAD));
        }
    }
    else if (err != EPROTO && err != err_ref) {
        FAIL("error %d with truncated fds", err);
    }
    if (count_fds() != fds_before) {
        FAIL("%d fds open before the input, %d after", fds_before,
             count_fds());
    }
    return 0;
}
