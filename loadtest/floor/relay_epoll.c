/*
 * relay_epoll: the floor for any epoll-based HTTP proxy, not a proxy.
 *
 * Each accepted client gets its own upstream connection (1:1, both kept alive) and bytes are
 * copied both ways exactly as read: no parsing, no headers added, no pool, no timers. It does
 * the least work per request that a user-space proxy using read/write can do, so its CPU per
 * request on the gateway core is a lower bound for nginx and for ringgate alike.
 *
 * Built with -DSPLICE (relay_splice), bytes go socket -> pipe -> socket with splice(2) instead of
 * read/write: the kernel moves page references, so the two copies through user space are saved.
 * That shows what zero-copy relaying of bodies could buy over the copying floor.
 *
 * Usage: relay_epoll LISTEN_PORT UPSTREAM_PORT   (127.0.0.1 only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
static int peer[MAXFD];
#ifdef SPLICE
#include <fcntl.h>
static int pipe_r[MAXFD], pipe_w[MAXFD]; /* per source fd: the pipe its bytes go through */
#endif

static void die(const char *what) { perror(what); exit(1); }

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

#ifndef SPLICE
static char buf[65536];

/* Write all of it: loopback buffers take a 16 KiB response at once; a short write blocks briefly. */
static int write_all(int fd, const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= w;
    }
    return 0;
}
#endif

static void close_pair(int ep, int fd) {
    int o = peer[fd];
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    epoll_ctl(ep, EPOLL_CTL_DEL, o, NULL);
#ifdef SPLICE
    close(pipe_r[fd]); close(pipe_w[fd]); close(pipe_r[o]); close(pipe_w[o]);
#endif
    close(fd);
    close(o);
    peer[fd] = peer[o] = -1;
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
    if (bind(ls, (struct sockaddr *)&la, sizeof la) || listen(ls, 4096)) die("listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c = accept4(ls, NULL, NULL, 0);
                if (c < 0 || c >= MAXFD) { if (c >= 0) close(c); continue; }
                int u = socket(AF_INET, SOCK_STREAM, 0);
                if (u < 0 || u >= MAXFD || connect(u, (struct sockaddr *)&ua, sizeof ua)) {
                    close(c);
                    if (u >= 0) close(u);
                    continue;
                }
                nodelay(c);
                nodelay(u);
#ifdef SPLICE
                int pc[2], pu[2];
                if (pipe2(pc, O_CLOEXEC) || pipe2(pu, O_CLOEXEC)) die("pipe2");
                fcntl(pc[0], F_SETPIPE_SZ, 65536);
                fcntl(pu[0], F_SETPIPE_SZ, 65536);
                pipe_r[c] = pc[0]; pipe_w[c] = pc[1];
                pipe_r[u] = pu[0]; pipe_w[u] = pu[1];
#endif
                peer[c] = u;
                peer[u] = c;
                ev.data.fd = c;
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                ev.data.fd = u;
                epoll_ctl(ep, EPOLL_CTL_ADD, u, &ev);
                continue;
            }
            if (peer[fd] < 0) continue;
#ifdef SPLICE
            ssize_t r = splice(fd, NULL, pipe_w[fd], NULL, 65536, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (r <= 0) {
                if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
                close_pair(ep, fd);
                continue;
            }
            while (r > 0) { /* drain the pipe into the peer; blocking socket, so it all goes */
                ssize_t w = splice(pipe_r[fd], NULL, peer[fd], NULL, (size_t)r, SPLICE_F_MOVE);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) { close_pair(ep, fd); break; }
                r -= w;
            }
#else
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) continue;
                close_pair(ep, fd);
                continue;
            }
            if (write_all(peer[fd], buf, r)) close_pair(ep, fd);
#endif
        }
    }
}
