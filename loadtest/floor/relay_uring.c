/*
 * relay_uring: the floor for an io_uring proxy using every saving the kernel offers, not a proxy.
 *
 * Like relay_epoll (1:1 client/upstream connections, bytes copied exactly as received, no parsing),
 * but on one io_uring with the features ringgate's runtime (monoio 0.2) does not expose:
 *   - registered (fixed) files: no fget/fput per operation;
 *   - multishot receive into a provided buffer ring: one receive armed per socket for its
 *     whole life, so no poll re-arming per request;
 *   - SINGLE_ISSUER | DEFER_TASKRUN, as ringgate already uses.
 * Sends go straight out (a loopback send with room completes inline). Its CPU per request on the
 * gateway core is a lower bound for any io_uring proxy on this kernel.
 *
 * Usage: relay_uring LISTEN_PORT UPSTREAM_PORT   (127.0.0.1 only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOTS 8192          /* fixed-file slots: client 2i, its upstream 2i+1 */
#define NBUF 1024           /* provided buffers */
#define BUFSZ 32768
#define BGID 0

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_CLOSE = 4 };

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static int rawfd[SLOTS];            /* the real fd behind each slot, -1 when free */
static struct { int slot; unsigned len, off; } pend[NBUF];  /* a buffer being sent */
static int next_pair;

static void die(const char *what, int e) { fprintf(stderr, "%s: %s\n", what, strerror(e)); exit(1); }

static struct io_uring_sqe *sqe_get(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) {
        io_uring_submit(&ring);
        s = io_uring_get_sqe(&ring);
    }
    return s;
}

static __u64 ud(int op, int slot, int bid) { return ((__u64)op << 56) | ((__u64)(unsigned)bid << 24) | (unsigned)slot; }

static void arm_recv(int slot) {
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_recv_multishot(s, slot, NULL, 0, 0);
    s->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    s->buf_group = BGID;
    io_uring_sqe_set_data64(s, ud(OP_RECV, slot, 0));
}

static void give_back(int bid) {
    io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFSZ, BUFSZ, bid, io_uring_buf_ring_mask(NBUF), 0);
    io_uring_buf_ring_advance(br, 1);
}

static void send_buf(int slot, int bid) {
    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_send(s, slot, bufs + (size_t)bid * BUFSZ + pend[bid].off, pend[bid].len - pend[bid].off,
                       MSG_NOSIGNAL);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, ud(OP_SEND, slot, bid));
}

static void close_pair(int slot) {
    int base = slot & ~1;
    for (int s = base; s < base + 2; s++) {
        if (rawfd[s] < 0) continue;
        shutdown(rawfd[s], SHUT_RDWR);  /* ends the other side's multishot receive */
        close(rawfd[s]);
        rawfd[s] = -1;
        int minus1 = -1;
        io_uring_register_files_update(&ring, s, &minus1, 1);
    }
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &la.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &ua.sin_addr);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&la, sizeof la) || listen(ls, 4096)) die("listen", errno);

    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int r = io_uring_queue_init_params(4096, &ring, &p);
    if (r < 0) die("io_uring_queue_init", -r);
    if ((r = io_uring_register_files_sparse(&ring, SLOTS)) < 0) die("register_files_sparse", -r);
    for (int i = 0; i < SLOTS; i++) rawfd[i] = -1;

    if (posix_memalign((void **)&br, 4096, NBUF * sizeof(struct io_uring_buf))) die("memalign", ENOMEM);
    bufs = malloc((size_t)NBUF * BUFSZ);
    if (!bufs) die("malloc", ENOMEM);
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = BGID};
    if ((r = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) die("register_buf_ring", -r);
    for (int b = 0; b < NBUF; b++)
        io_uring_buf_ring_add(br, bufs + (size_t)b * BUFSZ, BUFSZ, b, io_uring_buf_ring_mask(NBUF), b);
    io_uring_buf_ring_advance(br, NBUF);

    struct io_uring_sqe *s = sqe_get();
    io_uring_prep_multishot_accept(s, ls, NULL, NULL, 0);
    io_uring_sqe_set_data64(s, ud(OP_ACCEPT, 0, 0));

    for (;;) {
        r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR) die("submit_and_wait", -r);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            __u64 d = cqe->user_data;
            int op = (int)(d >> 56), slot = (int)(d & 0xffffff), bid = (int)((d >> 24) & 0xffffffff & 0xffff);
            int res = cqe->res;
            if (op == OP_ACCEPT) {
                if (!(cqe->flags & IORING_CQE_F_MORE)) {  /* re-arm */
                    struct io_uring_sqe *a = sqe_get();
                    io_uring_prep_multishot_accept(a, ls, NULL, NULL, 0);
                    io_uring_sqe_set_data64(a, ud(OP_ACCEPT, 0, 0));
                }
                if (res < 0) continue;
                int c = res, u = socket(AF_INET, SOCK_STREAM, 0);
                int pair = next_pair;
                while (rawfd[2 * pair] >= 0) pair = (pair + 1) % (SLOTS / 2);
                next_pair = (pair + 1) % (SLOTS / 2);
                if (u < 0 || connect(u, (struct sockaddr *)&ua, sizeof ua)) {
                    close(c);
                    if (u >= 0) close(u);
                    continue;
                }
                nodelay(c);
                nodelay(u);
                int fds[2] = {c, u};
                io_uring_register_files_update(&ring, 2 * pair, fds, 2);
                rawfd[2 * pair] = c;
                rawfd[2 * pair + 1] = u;
                arm_recv(2 * pair);
                arm_recv(2 * pair + 1);
            } else if (op == OP_RECV) {
                if (res <= 0) {
                    if (res != -ENOBUFS) {
                        close_pair(slot);
                        continue;
                    }
                } else {
                    int b = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                    pend[b].slot = slot ^ 1;
                    pend[b].len = (unsigned)res;
                    pend[b].off = 0;
                    if (rawfd[slot ^ 1] >= 0) send_buf(slot ^ 1, b);
                    else give_back(b);
                }
                if (!(cqe->flags & IORING_CQE_F_MORE) && rawfd[slot] >= 0) arm_recv(slot);
            } else if (op == OP_SEND) {
                if (res > 0 && (unsigned)res + pend[bid].off < pend[bid].len && rawfd[slot] >= 0) {
                    pend[bid].off += (unsigned)res;  /* short send: the rest */
                    send_buf(slot, bid);
                    continue;
                }
                give_back(bid);
                if (res < 0) close_pair(slot);
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}
