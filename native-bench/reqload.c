/*
 * reqload: a small closed-loop HTTP/1.1 keep-alive load generator for small responses, used by the
 * peerpull registry benchmark for HEAD requests (wrk 4.1 and h2load wait for a body after a HEAD
 * response that carries Content-Length; ab speaks only HTTP/1.0, which uWebSockets.js refuses).
 * It also does GET (bodies sized by Content-Length) so its figures can be checked against wrk's.
 *
 *   reqload <HEAD|GET> <host> <port> <path> <connections> <seconds>
 *
 * One thread, epoll, one request in flight per connection. Latency is from writing a request to
 * reading the end of its response, kept in a 1 us histogram up to 1 s. Prints one JSON line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 1000000
#define BUF 65536

struct conn {
  int fd;
  int head_len;      /* bytes of the current response's header block seen so far */
  long body_left;    /* body bytes still to read; -1 while in the header block */
  int ok_status;
  uint64_t started;  /* ns */
  char head[8192];
};

static uint64_t hist[HIST_US + 1];
static uint64_t requests, bytes, status_errors, conn_errors, protocol_errors;
static uint64_t lat_sum_us, lat_max_us;
static char request[4096];
static size_t request_len;
static int is_head;
static struct sockaddr_in addr;
static int ep;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int send_request(struct conn *c) {
  c->head_len = 0;
  c->body_left = -1;
  c->ok_status = 0;
  c->started = now_ns();
  ssize_t n = write(c->fd, request, request_len);
  return n == (ssize_t)request_len ? 0 : -1;
}

static int open_conn(struct conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0) return -1;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) return -1;
  return send_request(c);
}

static void reopen(struct conn *c) {
  conn_errors++;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  if (open_conn(c) != 0 && c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
}

static void complete(struct conn *c) {
  uint64_t us = (now_ns() - c->started) / 1000;
  hist[us > HIST_US ? HIST_US : us]++;
  lat_sum_us += us;
  if (us > lat_max_us) lat_max_us = us;
  requests++;
  if (!c->ok_status) status_errors++;
}

/* Parses the header block once it is complete: status and Content-Length. */
static long parse_head(struct conn *c) {
  c->ok_status = strncmp(c->head, "HTTP/1.1 2", 10) == 0;
  if (is_head) return 0;
  char *p = c->head;
  while ((p = strstr(p, "\r\n")) != NULL) {
    p += 2;
    if (strncasecmp(p, "content-length:", 15) == 0) return strtol(p + 15, NULL, 10);
  }
  return -2; /* no length: cannot frame the body */
}

/* Feeds bytes read from a connection; returns -1 on a protocol error. */
static int feed(struct conn *c, const char *data, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (c->body_left < 0) {
      /* In the header block: copy until CRLFCRLF. */
      while (i < n) {
        if (c->head_len >= (int)sizeof c->head - 1) return -1;
        c->head[c->head_len++] = data[i++];
        if (c->head_len >= 4 && memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4) == 0) {
          c->head[c->head_len] = 0;
          long len = parse_head(c);
          if (len < 0) return -1;
          c->body_left = len;
          break;
        }
      }
    }
    if (c->body_left >= 0) {
      size_t take = (size_t)c->body_left < n - i ? (size_t)c->body_left : n - i;
      c->body_left -= (long)take;
      i += take;
      if (c->body_left == 0) {
        complete(c);
        /* One request in flight: anything after the response is a protocol error (e.g. a HEAD body). */
        if (i != n) return -1;
        if (send_request(c) != 0) return -1;
        return 0;
      }
    }
  }
  return 0;
}

static uint64_t percentile(double p) {
  uint64_t want = (uint64_t)((double)requests * p / 100.0 + 0.5);
  if (want == 0) want = 1;
  uint64_t seen = 0;
  for (uint64_t us = 0; us <= HIST_US; us++) {
    seen += hist[us];
    if (seen >= want) return us;
  }
  return HIST_US;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: reqload <HEAD|GET> <host> <port> <path> <connections> <seconds>\n");
    return 2;
  }
  is_head = strcmp(argv[1], "HEAD") == 0;
  if (!is_head && strcmp(argv[1], "GET") != 0) return 2;
  int nconn = atoi(argv[5]);
  double seconds = atof(argv[6]);
  if (nconn < 1 || seconds <= 0) return 2;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) return 2;
  request_len = (size_t)snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: peerpull-bench-reqload\r\nAccept: */*\r\n\r\n", argv[1], argv[4], argv[2], argv[3]);
  if (request_len >= sizeof request) return 2;

  ep = epoll_create1(0);
  struct conn *conns = calloc((size_t)nconn, sizeof *conns);
  static char buf[BUF];
  uint64_t start = now_ns();
  for (int i = 0; i < nconn; i++) {
    if (open_conn(&conns[i]) != 0) {
      fprintf(stderr, "reqload: cannot connect: %s\n", strerror(errno));
      return 1;
    }
  }
  uint64_t deadline = start + (uint64_t)(seconds * 1e9);
  struct epoll_event events[256];
  while (now_ns() < deadline) {
    int n = epoll_wait(ep, events, 256, 50);
    if (n < 0 && errno != EINTR) break;
    for (int k = 0; k < n; k++) {
      struct conn *c = events[k].data.ptr;
      ssize_t r = read(c->fd, buf, sizeof buf);
      if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        reopen(c);
        continue;
      }
      bytes += (uint64_t)r;
      if (feed(c, buf, (size_t)r) != 0) {
        protocol_errors++;
        reopen(c);
      }
    }
  }
  double elapsed = (double)(now_ns() - start) / 1e9;
  printf("{\"seconds\":%.6f,\"requests\":%llu,\"bytes\":%llu,\"status_errors\":%llu,\"conn_errors\":%llu,\"protocol_errors\":%llu,"
         "\"p50_us\":%llu,\"p99_us\":%llu,\"mean_us\":%.3f,\"max_us\":%llu}\n",
         elapsed, (unsigned long long)requests, (unsigned long long)bytes, (unsigned long long)status_errors,
         (unsigned long long)conn_errors, (unsigned long long)protocol_errors, (unsigned long long)percentile(50),
         (unsigned long long)percentile(99), requests ? (double)lat_sum_us / (double)requests : 0.0,
         (unsigned long long)lat_max_us);
  return 0;
}
