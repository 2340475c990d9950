/*
 * bindaddr.c: an LD_PRELOAD shim for cluster workers. A bind(2) to the IPv4 wildcard
 * (0.0.0.0) or the IPv6 wildcard (::) binds TRUSTEDML_BIND_ADDRESS instead, same port;
 * every other bind passes through. Some libraries a job runs (libxgboost's collective)
 * bind the wildcard with no setting to change it, and a worker must listen only on the
 * address the cluster gave it.
 *
 * Such a library may then reach its own listener at loopback (libxgboost wakes its
 * error handler by connecting to 127.0.0.1): a connect(2) to a loopback address at a
 * port this process moved goes to TRUSTEDML_BIND_ADDRESS instead. Other connects pass
 * through.
 *
 * Built by trustedml.cluster._bindaddr with the machine's C compiler:
 *   cc -shared -fPIC -O2 -o bindaddr.so bindaddr.c -ldl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*sock_fn)(int, const struct sockaddr *, socklen_t);

/* The ports this process moved off the wildcard (the last MOVED_SLOTS of them). */
#define MOVED_SLOTS 256
static unsigned short moved[MOVED_SLOTS];
static unsigned int moved_next;

/* The libc function ``name`` this shim stands in front of (NULL and ENOSYS if none). */
static sock_fn next_fn(const char *name, sock_fn *cache)
{
    /* Racing threads store the same pointer. */
    if (*cache == NULL)
        *cache = (sock_fn)dlsym(RTLD_NEXT, name);
    if (*cache == NULL)
        errno = ENOSYS;
    return *cache;
}

/* The bind address: 4 or 6 (family parsed), 0 unset, -1 unreadable. */
static int wanted(struct in_addr *v4, struct in6_addr *v6)
{
    const char *want = getenv("TRUSTEDML_BIND_ADDRESS");
    if (want == NULL || *want == '\0')
        return 0;
    if (inet_pton(AF_INET, want, v4) == 1)
        return 4;
    if (inet_pton(AF_INET6, want, v6) == 1)
        return 6;
    return -1;
}

static int v6_only(int fd)
{
    int on = 0;
    socklen_t len = sizeof on;
    return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &len) == 0 && on;
}

static void v4_mapped(struct in6_addr *out, const struct in_addr *v4)
{
    memset(out, 0, sizeof *out);
    out->s6_addr[10] = 0xff;
    out->s6_addr[11] = 0xff;
    memcpy(&out->s6_addr[12], v4, sizeof *v4);
}

static void remember(int fd)
{
    struct sockaddr_storage got;
    socklen_t len = sizeof got;
    if (getsockname(fd, (struct sockaddr *)&got, &len) != 0)
        return;
    unsigned short port = got.ss_family == AF_INET6
                              ? ((struct sockaddr_in6 *)&got)->sin6_port
                              : ((struct sockaddr_in *)&got)->sin_port;
    unsigned int slot = __atomic_fetch_add(&moved_next, 1, __ATOMIC_RELAXED) % MOVED_SLOTS;
    __atomic_store_n(&moved[slot], port, __ATOMIC_RELAXED);
}

static int was_moved(unsigned short port)
{
    for (unsigned int i = 0; i < MOVED_SLOTS; i++)
        if (port != 0 && __atomic_load_n(&moved[i], __ATOMIC_RELAXED) == port)
            return 1;
    return 0;
}

/* Rewrite a wildcard ``addr`` into ``out``: 1 rewritten, 0 leave it, -1 refuse. */
static int moved_bind(int fd, const struct sockaddr *addr, socklen_t len,
                      struct sockaddr_storage *out)
{
    struct in_addr v4;
    struct in6_addr v6;
    int family = wanted(&v4, &v6);
    if (family == 0 || addr == NULL)
        return 0;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        memcpy(in, addr, sizeof *in);
        if (in->sin_addr.s_addr != htonl(INADDR_ANY) || family == 6)
            return 0; /* a v4 socket cannot take a v6 address */
        if (family < 0)
            return -1; /* unreadable address: refuse rather than listen everywhere */
        in->sin_addr = v4;
        return 1;
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        memcpy(in6, addr, sizeof *in6);
        if (!IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr))
            return 0;
        if (family < 0)
            return -1;
        if (family == 6) {
            in6->sin6_addr = v6;
            return 1;
        }
        /* A v6-only socket cannot take a v4-mapped address, and it is not reachable
         * at the v4 address anyway: it stays as it is. */
        if (v6_only(fd))
            return 0;
        /* Dual-stack (every JVM socket): the v4-mapped form of the address. */
        v4_mapped(&in6->sin6_addr, &v4);
        return 1;
    }
    return 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static sock_fn cache;
    sock_fn next = next_fn("bind", &cache);
    if (next == NULL)
        return -1;
    struct sockaddr_storage copy;
    int how = moved_bind(fd, addr, len, &copy);
    if (how < 0) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    if (how == 0)
        return next(fd, addr, len);
    int done = next(fd, (const struct sockaddr *)&copy, len);
    if (done == 0)
        remember(fd);
    return done;
}

static int is_loopback6(const struct in6_addr *a)
{
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    static sock_fn cache;
    struct in_addr v4;
    struct in6_addr v6;
    sock_fn next = next_fn("connect", &cache);
    int family = addr == NULL ? 0 : wanted(&v4, &v6);
    if (next == NULL)
        return -1;
    if (family <= 0)
        return next(fd, addr, len);
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in) &&
        family == 4) {
        struct sockaddr_in in;
        memcpy(&in, addr, sizeof in);
        if ((ntohl(in.sin_addr.s_addr) >> 24) == 127 && was_moved(in.sin_port)) {
            in.sin_addr = v4;
            return next(fd, (const struct sockaddr *)&in, sizeof in);
        }
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 in6;
        memcpy(&in6, addr, sizeof in6);
        if (is_loopback6(&in6.sin6_addr) && was_moved(in6.sin6_port)) {
            if (family == 6)
                in6.sin6_addr = v6;
            else
                v4_mapped(&in6.sin6_addr, &v4);
            return next(fd, (const struct sockaddr *)&in6, sizeof in6);
        }
    }
    return next(fd, addr, len);
}
