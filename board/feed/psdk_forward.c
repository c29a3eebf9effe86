/* Forwards a Payload-SDK liveview H.264 stream to dockcast's payload feed
 * (feed:unix:/run/dockcast/wide.sock), with the 16-byte chunk header of FEED.md carrying the
 * time each callback buffer arrived, and answers dockcast's "IDR\n" requests.
 *
 * The callback runs on a PSDK thread: it must not block for long, so the socket is
 * non-blocking and a buffer that does not fit is dropped (dockcast then waits for the next
 * keyframe). A lost connection is retried from the callback at most every 200 ms. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "psdk_stub.h" /* with the real SDK: #include "dji_liveview.h" */

#define FEED_PATH "/run/dockcast/wide.sock"

static int feed_fd = -1;
static uint64_t last_attempt_us;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

static void feed_connect(void)
{
    uint64_t now = now_us();
    if (feed_fd >= 0 || now - last_attempt_us < 200000u) return;
    last_attempt_us = now;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, FEED_PATH, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { close(fd); return; }
    feed_fd = fd;
}

/* Reads dockcast's request lines; each "IDR\n" asks the camera for an intra frame. */
static void feed_poll_requests(E_DjiLiveViewCameraPosition pos)
{
    char line[64];
    ssize_t n = recv(feed_fd, line, sizeof line, MSG_DONTWAIT);
    if (n == 0) { close(feed_fd); feed_fd = -1; return; }
    for (ssize_t i = 0; i + 3 < n; i++)
        if (memcmp(&line[i], "IDR\n", 4) == 0) {
            /* Not every aircraft supports it; an error here is harmless. */
            (void)DjiLiveview_RequestIntraframeFrameData(pos, DJI_LIVEVIEW_CAMERA_SOURCE_DEFAULT);
            break;
        }
}

static void on_h264(E_DjiLiveViewCameraPosition pos, const uint8_t *buf, uint32_t len)
{
    feed_connect();
    if (feed_fd < 0 || len == 0) return;
    feed_poll_requests(pos);
    if (feed_fd < 0) return;
    uint8_t header[16];
    memcpy(header, "DKCF", 4);
    put_be32(header + 4, len);
    put_be64(header + 8, now_us());
    struct iovec iov[2] = {{header, sizeof header}, {(void *)buf, len}};
    size_t total = sizeof header + len, done = 0;
    while (done < total) {
        ssize_t n = writev(feed_fd, iov, 2);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (done == 0) return; /* nothing sent yet: drop this buffer */
            /* Half a chunk is out: finish it within 100 ms or give the connection up. */
            struct pollfd p = {.fd = feed_fd, .events = POLLOUT};
            if (poll(&p, 1, 100) == 1) continue;
        }
        if (n < 0) { close(feed_fd); feed_fd = -1; return; } /* dockcast gone: reconnect later */
        done += (size_t)n;
        /* A partial write must be finished, or the framing breaks: advance the iovecs. */
        for (int i = 0; i < 2; i++) {
            size_t take = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;
            iov[i].iov_base = (uint8_t *)iov[i].iov_base + take;
            iov[i].iov_len -= take;
            n -= (ssize_t)take;
        }
    }
}

int start_forwarding(void)
{
    if (DjiLiveview_Init() != DJI_ERROR_SYSTEM_MODULE_CODE_SUCCESS) return -1;
    return DjiLiveview_StartH264Stream(DJI_LIVEVIEW_CAMERA_POSITION_NO_1,
                                       DJI_LIVEVIEW_CAMERA_SOURCE_DEFAULT, on_h264)
                   == DJI_ERROR_SYSTEM_MODULE_CODE_SUCCESS
               ? 0
               : -1;
}
