/* frames_fuzz.c: feeds generated and mutated byte streams (and stray fds)
   into a channel's frame decoder through a real socketpair, and checks that
   every stream ends in frames, a protocol error or EOF, never in a crash or
   a leak (run under ASan+UBSan by scripts/fuzz.sh). Inputs derive from a
   seed and from the corpus files named on the command line; no libFuzzer
   is needed, so it runs wherever gcc does. One input in eight is instead
   sent by a real channel, frames with descriptors in batches, to a reader
   out of descriptors (RLIMIT_NOFILE): every frame must come, in order,
   whole or lost (CX_FRAME_LOST), and the channel must stay open.
     frames_fuzz ITERATIONS SEED [corpus files...]                         */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_INPUT (256 * 1024)

static uint64_t rng_state;

static uint32_t
rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

/* A few valid frames, some with a declared fd. */
static size_t
valid_frames(unsigned char *buf, size_t cap, int *nfds)
{
    size_t len = 0;
    int count = 1 + (int)(rnd() % 6);

    *nfds = 0;
    for (int i = 0; i < count; i++) {
        cx_frame_header hdr;
        uint32_t body = rnd() % 4096;
        if (len + sizeof(hdr) + body > cap) {
            break;
        }
        hdr.len = body;
        hdr.type = (uint8_t)(1 + rnd() % (CX_FRAME_TYPE_END - 1));
        hdr.nfds = (uint8_t)(rnd() % 8 == 0);
        hdr.flags = (uint16_t)rnd();
        *nfds += hdr.nfds;
        memcpy(buf + len, &hdr, sizeof(hdr));
        for (uint32_t k = 0; k < body; k++) {
            buf[len + sizeof(hdr) + k] = (unsigned char)rnd();
        }
        len += sizeof(hdr) + body;
    }
    return len;
}

static void
mutate(unsigned char *buf, size_t *len)
{
    int edits = 1 + (int)(rnd() % 8);

    for (int i = 0; i < edits && *len > 0; i++) {
        switch (rnd() % 4) {
        case 0:                 /* flip a byte */
            buf[rnd() % *len] ^= (unsigned char)(1u << (rnd() % 8));
            break;
        case 1:                 /* cut the tail */
            *len = rnd() % *len;
            break;
        case 2:                 /* a huge or odd length field */
            if (*len >= 4) {
                uint32_t v = rnd() % 2 ? 0xFFFFFFFFu : rnd();
                memcpy(buf, &v, 4);
            }
            break;
        default:                /* a random byte anywhere */
            buf[rnd() % *len] = (unsigned char)rnd();
            break;
        }
    }
}

/* Sends buf (with nfds stray descriptors on the first byte) and EOF. */
static int
feed(int fd, const unsigned char *buf, size_t len, int nfds)
{
    size_t off = 0;

    if (nfds > 0 && len > 0) {
        union {
            struct cmsghdr align;
            char b[CMSG_SPACE(sizeof(int) * 4)];
        } control;
        int fds[4];
        struct iovec iov = {(void *)buf, 1};
        struct msghdr msg = {0};
        struct cmsghdr *cm;
        nfds = nfds > 4 ? 4 : nfds;
        for (int i = 0; i < nfds; i++) {
            fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.b;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
        if (sendmsg(fd, &msg, MSG_NOSIGNAL) == 1) {
            off = 1;
        }
        for (int i = 0; i < nfds; i++) {
            cx_close(&fds[i]);
        }
    }
    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n <= 0) {
            return -1;          /* the reader closed: a protocol error */
        }
        off += (size_t)n;
    }
    return 0;
}

static long lost_frames;

/* Sends up to 64 frames, some with descriptors, from one channel to
   another, in batches of up to 64 fds, while the reader can open only a
   random number of descriptors more; then checks each frame that came. */
static int
starved_reader(cx_loop *loop, int devnull)
{
    enum { MAX_SENT = 64 };
    struct {
        int type, flags, nfds;
        uint32_t body;
    } sent[MAX_SENT];
    unsigned char payload[64];
    int sv[2], fds[CX_MAX_FDS], nsent = 1 + (int)(rnd() % MAX_SENT);
    int got = 0, room, total = 0;
    struct rlimit saved, low;
    cx_chan tx, rx;
    cx_note *note;

    for (int i = 0; i < CX_MAX_FDS; i++) {
        fds[i] = devnull;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return 2;
    }
    cx_chan_init(loop, &tx);
    cx_chan_init(loop, &rx);
    if (cx_chan_open(&tx, sv[0], 64 * 1024, 1 << 20) < 0 ||
        cx_chan_open(&rx, sv[1], 64 * 1024, 1 << 20) < 0) {
        return 2;
    }
    cx_chan_mark_batches(&tx);          /* as the primary's channels do */
    /* Queued as one drain queues them; each flush is a few sendmsg calls,
       up to 64 fds each, every batch led by a marked frame. */
    cx_loop_defer_begin(loop);
    for (int i = 0; i < nsent; i++) {
        sent[i].type = 1 + (int)(rnd() % (CX_FRAME_TYPE_END - 1));
        sent[i].flags = (int)(rnd() & 0xffff);
        sent[i].nfds = rnd() % 2 ? (int)(rnd() % (CX_MAX_FDS + 1)) : 0;
        if (total + sent[i].nfds > 256) {     /* in flight: under the limit */
            sent[i].nfds = 0;
        }
        sent[i].body = rnd() % sizeof(payload);
        total += sent[i].nfds;
        for (uint32_t k = 0; k < sent[i].body; k++) {
            payload[k] = (unsigned char)(i + (int)k);
        }
        if (cx_chan_send(&tx, sent[i].type, sent[i].flags, payload,
                         sent[i].body, fds, sent[i].nfds, 0) < 0) {
            return 2;
        }
        if (rnd() % 8 == 0) {
            cx_loop_flush(loop);        /* a batch ends here */
        }
    }
    cx_loop_defer_end(loop);
    /* The reader's table is full but for room descriptors: the limit is a
       bound on their numbers, so it goes just past the room lowest free
       ones. */
    room = (int)(rnd() % (uint32_t)(total + 2));
    if (getrlimit(RLIMIT_NOFILE, &saved) < 0) {
        return 2;
    }
    low = saved;
    {
        int probe[300], nprobe = 0;
        for (; nprobe <= room; nprobe++) {
            probe[nprobe] = fcntl(devnull, F_DUPFD_CLOEXEC, 3);
            if (probe[nprobe] < 0) {
                return 2;
            }
        }
        low.rlim_cur = (rlim_t)probe[room];
        for (int i = 0; i < nprobe; i++) {
            cx_close(&probe[i]);
        }
    }
    if (setrlimit(RLIMIT_NOFILE, &low) < 0) {
        return 2;
    }
    for (int turn = 0; turn < 64 && cx_chan_queued(&tx) > 0; turn++) {
        (void)cx_loop_turn(loop, 0);
    }
    for (int turn = 0; turn < 8; turn++) {
        (void)cx_loop_turn(loop, 0);
    }
    if (setrlimit(RLIMIT_NOFILE, &saved) < 0) {
        return 2;
    }
    if (rx.fd < 0 || tx.fd < 0) {
        fprintf(stderr, "starved reader: a channel closed\n");
        return 1;
    }
    while ((note = cx_note_pop(loop)) != NULL) {
        int lost = (note->a & CX_FRAME_LOST) != 0;
        if (note->h == &loop->wake) {   /* a note made outside a turn */
            note->h->pending--;
            cx_note_free(note);
            continue;
        }
        if (note->h != &rx.h || note->kind != CX_NOTE_FRAME || got >= nsent ||
            (note->a & ~CX_FRAME_LOST) != sent[got].type ||
            note->b != sent[got].flags || note->len != sent[got].body ||
            note->nfds != (lost ? 0 : sent[got].nfds) ||
            (lost && sent[got].nfds == 0)) {
            fprintf(stderr, "starved reader: frame %d of %d differs (note %d "
                    "of %s: a %#x b %d len %zu nfds %d; sent type %d flags %d "
                    "body %u nfds %d)\n", got, nsent, note->kind,
                    note->h == &rx.h ? "rx" : "another", note->a, note->b,
                    note->len, note->nfds, sent[got].type, sent[got].flags,
                    sent[got].body, sent[got].nfds);
            return 1;
        }
        for (uint32_t k = 0; k < note->len; k++) {
            if ((unsigned char)note->data[k] !=
                (unsigned char)(got + (int)k)) {
                fprintf(stderr, "starved reader: frame %d's payload\n", got);
                return 1;
            }
        }
        lost_frames += lost;
        if (lost && room > total) {
            fprintf(stderr, "starved reader: frame %d lost, with room\n", got);
            return 1;
        }
        got++;
        note->h->pending--;
        cx_note_free(note);
    }
    if (got != nsent) {
        fprintf(stderr, "starved reader: %d of %d frames came\n", got, nsent);
        return 1;
    }
    /* A reader marks its own batches once its peer has marked one. */
    if (rx.leads_seen != (total > 0) || (rx.out.lead_bit != 0) != (total > 0)) {
        fprintf(stderr, "starved reader: leads seen %d, marking %d, %d fds\n",
                rx.leads_seen, rx.out.lead_bit, total);
        return 1;
    }
    cx_chan_close(&tx);
    cx_chan_drain_close(&rx);
    while ((note = cx_note_pop(loop)) != NULL) {
        note->h->pending--;
        cx_note_free(note);
    }
    return 0;
}

int
main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 10000;
    unsigned char *buf = malloc(MAX_INPUT), *seeds[64];
    size_t seed_len[64];
    int nseeds = 0;
    long frames = 0, errors = 0, eofs = 0, starved = 0;
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cx_loop loop;

    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) | 1 : 88172645463325252ull;
    for (int i = 3; i < argc && nseeds < 64; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (f == NULL) {
            continue;
        }
        seeds[nseeds] = malloc(MAX_INPUT);
        seed_len[nseeds] = fread(seeds[nseeds], 1, MAX_INPUT, f);
        fclose(f);
        nseeds++;
    }
    memset(&loop, 0, sizeof(loop));
    if (buf == NULL || devnull < 0 || cx_loop_init(&loop) < 0) {
        return 2;
    }
    for (long it = 0; it < iterations; it++) {
        int sv[2], nfds = 0, mode = (int)(rnd() % 4);
        size_t len;
        cx_chan ch;
        cx_note *note;

        if (rnd() % 8 == 0) {
            int r = starved_reader(&loop, devnull);
            if (r != 0) {
                fprintf(stderr, "iteration %ld: starved reader failed\n", it);
                return r;
            }
            starved++;
            continue;
        }
        if (mode == 0) {        /* noise */
            len = rnd() % 512;
            for (size_t k = 0; k < len; k++) {
                buf[k] = (unsigned char)rnd();
            }
        }
        else if (mode == 1 && nseeds > 0) {
            int s = (int)(rnd() % (uint32_t)nseeds);
            len = seed_len[s];
            memcpy(buf, seeds[s], len);
            mutate(buf, &len);
        }
        else {
            len = valid_frames(buf, MAX_INPUT, &nfds);
            if (mode == 3) {
                mutate(buf, &len);
            }
        }
        if (rnd() % 4 == 0) {
            nfds += (int)(rnd() % 3);   /* descriptors nobody declared */
        }
        cx_chan_init(&loop, &ch);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
            cx_chan_open(&ch, sv[0], 64 * 1024, 1 << 16) < 0) {
            return 2;
        }
        (void)feed(sv[1], buf, len, nfds);
        cx_close(&sv[1]);
        for (int turn = 0; turn < 64 && ch.fd >= 0; turn++) {
            if (cx_loop_turn(&loop, 100) < 0) {
                return 3;
            }
        }
        if (ch.fd >= 0) {
            fprintf(stderr, "iteration %ld: the channel never closed\n", it);
            return 1;
        }
        while ((note = cx_note_pop(&loop)) != NULL) {
            frames += note->kind == CX_NOTE_FRAME;
            errors += note->kind == CX_NOTE_ERROR;
            eofs += note->kind == CX_NOTE_CLOSE && note->a == 0;
            note->h->pending--;
            cx_note_free(note);
        }
    }
    cx_loop_close(&loop);
    cx_close(&devnull);
    for (int i = 0; i < nseeds; i++) {
        free(seeds[i]);
    }
    free(buf);
    printf("{\"inputs\": %ld, \"frames\": %ld, \"protocol_errors\": %ld, "
           "\"clean_eofs\": %ld, \"starved_readers\": %ld, "
           "\"lost_frames\": %ld, \"crashes\": 0}\n", iterations, frames,
           errors, eofs, starved, lost_frames);
    return 0;
}
