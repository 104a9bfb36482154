/* frames_fuzz.c: feeds generated and mutated byte streams (and stray fds)
   into a channel's frame decoder through a real socketpair, and checks that
   every stream ends in frames, a protocol error or EOF, never in a crash or
   a leak (run under ASan+UBSan by scripts/fuzz.sh). Inputs derive from a
   seed and from the corpus files named on the command line; no libFuzzer
   is needed, so it runs wherever gcc does.
     frames_fuzz ITERATIONS SEED [corpus files...]                         */
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int
main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 10000;
    unsigned char *buf = malloc(MAX_INPUT), *seeds[64];
    size_t seed_len[64];
    int nseeds = 0;
    long frames = 0, errors = 0, eofs = 0;
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
    if (buf == NULL || cx_loop_init(&loop) < 0) {
        return 2;
    }
    for (long it = 0; it < iterations; it++) {
        int sv[2], nfds = 0, mode = (int)(rnd() % 4);
        size_t len;
        cx_chan ch;
        cx_note *note;

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
    for (int i = 0; i < nseeds; i++) {
        free(seeds[i]);
    }
    free(buf);
    printf("{\"inputs\": %ld, \"frames\": %ld, \"protocol_errors\": %ld, "
           "\"clean_eofs\": %ld, \"crashes\": 0}\n", iterations, frames, errors, eofs);
    return 0;
}
