/*
 * UDP ceiling with segmentation offload for `npm run bench` (issue 15): what
 * the loopback path moves when the kernel does per-datagram work once per
 * batch. The sender hands the kernel 15 x 4 KiB (61,440 B, the most 4 KiB
 * segments that fit in one 64 KiB UDP send) with UDP_SEGMENT (GSO); the
 * receiver turns UDP_GRO on and reads coalesced datagrams with recvmmsg,
 * counting the segments from the UDP_GRO control message (gso_size).
 *   udp_gso recv ADDR PORT SECONDS       prints "bytes=N secs=S packets=P"
 *   udp_gso send ADDR PORT SEGSIZE SECONDS
 * Needs Linux >= 5.0 (UDP_GRO); without it the receiver says so and exits 3.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define BATCH 8
#define MAXDGRAM 65536

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
	if (argc < 5) {
		fprintf(stderr, "usage: udp_gso recv ADDR PORT SECONDS | send ADDR PORT SEGSIZE SECONDS\n");
		return 2;
	}
	int recv_mode = strcmp(argv[1], "recv") == 0;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
	if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[2]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) { perror("socket"); return 1; }
	int bufsz = 8 << 20;
	setsockopt(fd, SOL_SOCKET, recv_mode ? SO_RCVBUF : SO_SNDBUF, &bufsz, sizeof bufsz);
	static char bufs[BATCH][MAXDGRAM];
	if (recv_mode) {
		double secs = atof(argv[4]);
		int one = 1;
		if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) < 0) { perror("UDP_GRO"); return 3; }
		if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
		struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		struct mmsghdr msgs[BATCH];
		struct iovec iov[BATCH];
		static char ctl[BATCH][CMSG_SPACE(sizeof(int))];
		memset(msgs, 0, sizeof msgs);
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = MAXDGRAM;
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		printf("ready\n");
		fflush(stdout);
		long long bytes = 0, packets = 0;
		double t0 = 0, last = 0, started = now();
		for (;;) {
			/* recvmmsg overwrites msg_controllen with what it used: reset it each call. */
			for (int i = 0; i < BATCH; i++) {
				msgs[i].msg_hdr.msg_control = ctl[i];
				msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
			}
			int n = recvmmsg(fd, msgs, BATCH, 0, NULL);
			double t = now();
			if (n <= 0) {
				if (t0 && t - last > 0.15) break;
				if (!t0 && t - started > 10) break; /* no sender came: bounded */
				continue;
			}
			if (!t0) t0 = t;
			last = t;
			for (int i = 0; i < n; i++) {
				unsigned len = msgs[i].msg_len;
				int seg = 0;
				for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
					if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) memcpy(&seg, CMSG_DATA(c), sizeof seg);
				bytes += len;
				/* No control message: the datagram was not coalesced (one segment). */
				packets += seg > 0 ? (len + seg - 1) / seg : 1;
			}
			if (t - t0 > secs) break;
		}
		printf("bytes=%lld secs=%.6f packets=%lld\n", bytes, last - t0, packets);
		return 0;
	}
	int seg = atoi(argv[4]);
	double secs = atof(argv[5]);
	if (seg <= 0 || seg > 8192) { fprintf(stderr, "segment size %d out of range\n", seg); return 2; }
	/* As many whole segments as fit under the 65,507-byte UDP payload limit. */
	int per = 65507 / seg;
	if (per > 64) per = 64; /* UDP_MAX_SEGMENTS */
	int len = per * seg;
	if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof seg) < 0) { perror("UDP_SEGMENT"); return 3; }
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	memset(msgs, 0, sizeof msgs);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = len;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	double t0 = now();
	while (now() - t0 < secs) sendmmsg(fd, msgs, BATCH, 0);
	return 0;
}
