/* muslin-fwd: the native `muslin-cni` / `muslin-ipam` (one binary, the plugin is chosen
 * by the basename of argv[0]: a name containing "ipam" is the IPAM plugin).
 *
 * Does what src/muslin/cni/entry.py's fast path does, without an interpreter:
 *  - no CNI_COMMAND: the about line on stderr, status 0;
 *  - VERSION: answered here, the same answer as entry.py's `_version`;
 *  - anything else: the CNI_* and MUSLIN_* environment and stdin go to muslind's agent
 *    socket (MUSLIN_AGENT_SOCKET, else the config's `agentSocket`, top level or under
 *    `ipam`, else /run/muslin/muslind.sock) in framing 2 (docs/architecture.md, "Agent
 *    socket framing"); the answer's stdout is printed and its rc is the exit status.
 *    An answer that cannot be read or parsed gives the CNI error JSON with code 11.
 *  - no agent answers the connect (socket missing, refused, timed out): exec the Python
 *    entry (MUSLIN_PY_DIR/muslin-{cni,ipam}-py), which does the work in-process. Stdin it
 *    read is handed over intact (a memfd on fd 0). So is every input this program is not
 *    sure to read exactly as Python's json would (deep nesting, huge integers, UTF-16,
 *    non-ASCII socket paths): Python decides those.
 * Build: scripts/setup.sh (cc -O2 [-static] -DMUSLIN_PY_DIR='"..."').
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_SOCKET "/run/muslin/muslind.sock"
#define CONNECT_TIMEOUT_MS 250 /* = entry.CONNECT_TIMEOUT */
#define ANSWER_TIMEOUT_S 300   /* = entry.ANSWER_TIMEOUT */
#define MAGIC "MSL2"           /* framing 2 */
#define MAX_ANSWER (256u << 20)
#define MAX_DEPTH 200           /* deeper JSON: Python decides */
#define MAX_INT_DIGITS 4300     /* Python's int max str digits */

/* = entry.VERSIONS = cni.types.SUPPORTED_VERSIONS (tests/unit/test_cni_native.py checks) */
static const char *const VERSIONS[] = {"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define NVERSIONS (sizeof VERSIONS / sizeof VERSIONS[0])
#define SUPPORTED "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"

/* ------------------------------------------------------------------ buffers and I/O */

struct buf {
    unsigned char *p;
    size_t len, cap;
};

static void oom(void)
{
    static const char m[] = "{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"internal error: out of memory\"}\n";
    (void)!write(1, m, sizeof m - 1);
    _exit(1);
}

static void reserve(struct buf *b, size_t more)
{
    if (b->len + more + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + more + 1)
            cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q)
            oom();
        b->p = q;
        b->cap = cap;
    }
}

static void put(struct buf *b, const void *p, size_t n)
{
    reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_be32(struct buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    put(b, x, 4);
}

static uint32_t get_be32(const unsigned char *x)
{
    return (uint32_t)x[0] << 24 | (uint32_t)x[1] << 16 | (uint32_t)x[2] << 8 | x[3];
}

/* All of fd until EOF (NUL-terminated); -1 with errno on a read error. */
static int read_all(int fd, struct buf *b)
{
    for (;;) {
        reserve(b, 65536);
        ssize_t n = read(fd, b->p + b->len, b->cap - b->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        b->len += (size_t)n;
        b->p[b->len] = 0;
        if (n == 0)
            return 0;
    }
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* sendmsg until every iovec is sent (short writes, EINTR); no SIGPIPE. */
static int send_all(int fd, struct iovec *iov, int n)
{
    while (n) {
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        while (n && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Exactly n bytes; 0, or -1 with errno, or 1 at EOF before n bytes. */
static int recv_exact(int fd, unsigned char *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* ------------------------------------------------------------------ JSON out (json.dumps, ensure_ascii) */

/* Length of the valid UTF-8 sequence at p (1-4), 0 if invalid. Surrogates (ED A0-BF)
 * are accepted only with `surrogates` (Python's 'surrogatepass'). */
static int utf8_len(const unsigned char *p, const unsigned char *end, int surrogates)
{
    unsigned c = p[0];
    size_t room = (size_t)(end - p);
#define CONT(i) (room > (i) && (p[i] & 0xC0) == 0x80)
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return CONT(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (!CONT(1) || !CONT(2))
            return 0;
        if (c == 0xE0 && p[1] < 0xA0)
            return 0;
        if (c == 0xED && p[1] >= 0xA0 && !surrogates)
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (!CONT(1) || !CONT(2) || !CONT(3))
            return 0;
        if (c == 0xF0 && p[1] < 0x90)
            return 0;
        if (c == 0xF4 && p[1] >= 0x90)
            return 0;
        return 4;
    }
#undef CONT
    return 0;
}

static void put_u(struct buf *b, unsigned cp)
{
    char x[8];
    snprintf(x, sizeof x, "\\u%04x", cp);
    puts_(b, x);
}

/* A JSON string of the bytes s (decoded like os.fsdecode: UTF-8, surrogateescape). */
static void put_json_str(struct buf *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + strlen(str);
    puts_(b, "\"");
    while (s < end) {
        unsigned c = *s;
        int n = utf8_len(s, end, 0);
        if (!n) {
            put_u(b, 0xDC00 + c);
            s++;
            continue;
        }
        if (n == 1) {
            const char *e = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                            : c == '\t' ? "\\t" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
            if (e)
                puts_(b, e);
            else if (c < 0x20)
                put_u(b, c);
            else
                put(b, s, 1);
        } else {
            unsigned cp = n == 2 ? (c & 0x1F) << 6 | (s[1] & 0x3F)
                        : n == 3 ? (c & 0x0F) << 12 | (s[1] & 0x3F) << 6 | (s[2] & 0x3F)
                                 : (c & 0x07) << 18 | (s[1] & 0x3F) << 12 | (s[2] & 0x3F) << 6 | (s[3] & 0x3F);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                put_u(b, 0xD800 + (cp >> 10));
                put_u(b, 0xDC00 + (cp & 0x3FF));
            } else {
                put_u(b, cp);
            }
        }
        s += n;
    }
    puts_(b, "\"");
}

static int emit(const struct buf *out, int rc)
{
    (void)write_all(1, out->p, out->len);
    return rc & 0xFF;
}

/* The CNI error JSON (cniVersion 1.1.0, like entry.py), printed; returns 1. */
static int cni_error(int code, const char *msg, const char *details)
{
    struct buf b = {0};
    char c[32];
    snprintf(c, sizeof c, "%d", code);
    puts_(&b, "{\"cniVersion\": \"1.1.0\", \"code\": ");
    puts_(&b, c);
    puts_(&b, ", \"msg\": ");
    put_json_str(&b, msg);
    if (details) {
        puts_(&b, ", \"details\": ");
        put_json_str(&b, details);
    }
    puts_(&b, "}\n");
    return emit(&b, 1);
}

static const char *errno_name(int e)
{
    switch (e) {
    case EAGAIN: return "TimeoutError";
    case EPIPE: return "BrokenPipeError";
    case ECONNRESET: return "ConnectionResetError";
    case ECONNREFUSED: return "ConnectionRefusedError";
    case ENOENT: return "FileNotFoundError";
    case EACCES: case EPERM: return "PermissionError";
    case EINTR: return "InterruptedError";
    default: return "OSError";
    }
}

/* "[Errno N] text", like str(OSError) (a timeout: "timed out"). */
static const char *errno_text(int e)
{
    static char t[160];
    if (e == EAGAIN)
        return "timed out";
    snprintf(t, sizeof t, "[Errno %d] %s", e, strerror(e));
    return t;
}

/* ------------------------------------------------------------------ JSON in (what Python's json.loads accepts) */

enum { J_OK, J_INVALID, J_UNSURE };

struct span {
    const unsigned char *p, *e; /* p == NULL: absent */
};

struct want {                    /* keys of one object whose LAST value is recorded */
    const char *const *names;
    int n;
    struct span *got;
};

struct scan {
    const unsigned char *s, *end;
    int surrogates; /* bytes input: json.loads decodes with 'surrogatepass' */
};

static void ws(struct scan *sc)
{
    while (sc->s < sc->end && (*sc->s == ' ' || *sc->s == '\t' || *sc->s == '\n' || *sc->s == '\r'))
        sc->s++;
}

static int hex4(const unsigned char *p, const unsigned char *end, unsigned *v)
{
    if (end - p < 4)
        return 0;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        *v = *v << 4 | d;
    }
    return 1;
}

static int string(struct scan *sc)
{
    sc->s++; /* the opening quote */
    for (;;) {
        if (sc->s >= sc->end)
            return J_INVALID;
        unsigned c = *sc->s;
        if (c == '"') {
            sc->s++;
            return J_OK;
        }
        if (c < 0x20) /* strict: no raw control characters */
            return J_INVALID;
        if (c == '\\') {
            if (sc->end - sc->s < 2)
                return J_INVALID;
            unsigned e = sc->s[1], v;
            if (e == 'u') {
                if (!hex4(sc->s + 2, sc->end, &v))
                    return J_INVALID;
                sc->s += 6;
            } else if (strchr("\"\\/bfnrt", (int)e) && e) {
                sc->s += 2;
            } else {
                return J_INVALID;
            }
            continue;
        }
        int n = utf8_len(sc->s, sc->end, sc->surrogates);
        if (!n)
            return J_INVALID;
        sc->s += n;
    }
}

/* The string at span decoded, when it is plain ASCII without NUL and fits: 1, else 0. */
static int ascii_value(struct span sp, char *out, size_t cap)
{
    const unsigned char *s = sp.p + 1, *end = sp.e - 1;
    size_t n = 0;
    while (s < end) {
        unsigned c = *s;
        if (c == '\\') {
            unsigned e = s[1];
            if (e == 'u') {
                hex4(s + 2, end, &c);
                s += 6;
            } else {
                c = e == 'b' ? '\b' : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
                s += 2;
            }
        } else {
            s++;
        }
        if (c == 0 || c >= 0x80 || n + 1 >= cap)
            return 0;
        out[n++] = (char)c;
    }
    out[n] = 0;
    return 1;
}

static int literal(struct scan *sc, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(sc->end - sc->s) < n || memcmp(sc->s, word, n))
        return J_INVALID;
    sc->s += n;
    return J_OK;
}

static int number(struct scan *sc)
{
    int integer = 1;
    if (*sc->s == '-') {
        sc->s++;
        if (sc->s < sc->end && *sc->s == 'I')
            return literal(sc, "Infinity");
    }
    const unsigned char *digits = sc->s;
#define DIGIT (sc->s < sc->end && *sc->s >= '0' && *sc->s <= '9')
    if (sc->s < sc->end && *sc->s == '0')
        sc->s++;
    else if (DIGIT)
        while (DIGIT)
            sc->s++;
    else
        return J_INVALID;
    size_t ndigits = (size_t)(sc->s - digits);
    /* A '.' or 'e' that does not start a fraction/exponent can never follow a value. */
    if (sc->s < sc->end && *sc->s == '.') {
        sc->s++;
        if (!DIGIT)
            return J_INVALID;
        while (DIGIT)
            sc->s++;
        integer = 0;
    }
    if (sc->s < sc->end && (*sc->s == 'e' || *sc->s == 'E')) {
        sc->s++;
        if (sc->s < sc->end && (*sc->s == '+' || *sc->s == '-'))
            sc->s++;
        if (!DIGIT)
            return J_INVALID;
        while (DIGIT)
            sc->s++;
        integer = 0;
    }
#undef DIGIT
    return integer && ndigits > MAX_INT_DIGITS ? J_UNSURE : J_OK;
}

static int value(struct scan *sc, int depth, const struct want *w);

static int object(struct scan *sc, int depth, const struct want *w)
{
    sc->s++;
    ws(sc);
    if (sc->s < sc->end && *sc->s == '}') {
        sc->s++;
        return J_OK;
    }
    for (;;) {
        if (sc->s >= sc->end || *sc->s != '"')
            return J_INVALID;
        struct span key = {sc->s, NULL};
        int r = string(sc);
        if (r != J_OK)
            return r;
        key.e = sc->s;
        ws(sc);
        if (sc->s >= sc->end || *sc->s != ':')
            return J_INVALID;
        sc->s++;
        ws(sc);
        struct span v = {sc->s, NULL};
        if ((r = value(sc, depth + 1, NULL)) != J_OK)
            return r;
        v.e = sc->s;
        if (w) {
            char k[32];
            if (ascii_value(key, k, sizeof k))
                for (int i = 0; i < w->n; i++)
                    if (!strcmp(k, w->names[i]))
                        w->got[i] = v; /* duplicates: the last one wins, as in a dict */
        }
        ws(sc);
        if (sc->s < sc->end && *sc->s == ',') {
            sc->s++;
            ws(sc);
            continue;
        }
        if (sc->s < sc->end && *sc->s == '}') {
            sc->s++;
            return J_OK;
        }
        return J_INVALID;
    }
}

static int array(struct scan *sc, int depth)
{
    sc->s++;
    ws(sc);
    if (sc->s < sc->end && *sc->s == ']') {
        sc->s++;
        return J_OK;
    }
    for (;;) {
        int r = value(sc, depth + 1, NULL);
        if (r != J_OK)
            return r;
        ws(sc);
        if (sc->s < sc->end && *sc->s == ',') {
            sc->s++;
            ws(sc);
            continue;
        }
        if (sc->s < sc->end && *sc->s == ']') {
            sc->s++;
            return J_OK;
        }
        return J_INVALID;
    }
}

static int value(struct scan *sc, int depth, const struct want *w)
{
    if (depth > MAX_DEPTH)
        return J_UNSURE;
    if (sc->s >= sc->end)
        return J_INVALID;
    switch (*sc->s) {
    case '{': return object(sc, depth, w);
    case '[': return array(sc, depth);
    case '"': return string(sc);
    case 't': return literal(sc, "true");
    case 'f': return literal(sc, "false");
    case 'n': return literal(sc, "null");
    case 'N': return literal(sc, "NaN");
    case 'I': return literal(sc, "Infinity");
    default:
        if (*sc->s == '-' || (*sc->s >= '0' && *sc->s <= '9'))
            return number(sc);
        return J_INVALID;
    }
}

/* The whole document [p, end); the top-level object's keys in w (if it is one). */
static int document(const unsigned char *p, const unsigned char *end, int surrogates, const struct want *w,
                    int *is_object)
{
    struct scan sc = {p, end, surrogates};
    ws(&sc);
    *is_object = sc.s < sc.end && *sc.s == '{';
    int r = value(&sc, 0, w);
    if (r != J_OK)
        return r;
    ws(&sc);
    return sc.s == sc.end ? J_OK : J_INVALID;
}

static int is_string(struct span sp) { return sp.p && *sp.p == '"'; }

/* ------------------------------------------------------------------ the plugin */

static int ipam_plugin;
static struct buf in;   /* stdin, when read */
static int have_in;

static int version(void)
{
    /* entry._version: json.loads(stdin.decode("utf-8") or "{}"); cniVersion if a known string. */
    static const char *const names[] = {"cniVersion"};
    struct span got[1] = {{0}};
    struct want w = {names, 1, got};
    const char *v = VERSIONS[NVERSIONS - 1];
    int obj = 0;
    int r = in.len ? document(in.p, in.p + in.len, 0, &w, &obj) : J_OK;
    if (r == J_UNSURE)
        return -1;
    char s[16];
    if (r == J_OK && obj && is_string(got[0]) && ascii_value(got[0], s, sizeof s))
        for (size_t i = 0; i < NVERSIONS; i++)
            if (!strcmp(s, VERSIONS[i]))
                v = VERSIONS[i];
    struct buf b = {0};
    puts_(&b, "{\"cniVersion\": \"");
    puts_(&b, v);
    puts_(&b, "\", \"supportedVersions\": [");
    for (size_t i = 0; i < NVERSIONS; i++) {
        puts_(&b, i ? ", \"" : "\"");
        puts_(&b, VERSIONS[i]);
        puts_(&b, "\"");
    }
    puts_(&b, "]}\n");
    return emit(&b, 0);
}

/* entry._socket_path for a config that names agentSocket: 1 found (in out), 0 the default,
 * -1 unsure (Python decides). */
static int agent_socket(char *out, size_t cap)
{
    if (!memmem(in.p, in.len, "\"agentSocket\"", 13))
        return 0;
    const unsigned char *p = in.p, *end = in.p + in.len;
    /* json.loads(bytes) detects UTF-16/32 and a UTF-8 BOM (json.detect_encoding) */
    if (in.len >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3))
        p += 3;
    else if ((p[0] == 0xFE && p[1] == 0xFF) || (p[0] == 0xFF && p[1] == 0xFE) || !p[0] || !p[1])
        return -1;
    static const char *const top_names[] = {"agentSocket", "ipam"};
    static const char *const ipam_names[] = {"agentSocket"};
    struct span top[2] = {{0}}, sub[1] = {{0}};
    struct want w = {top_names, 2, top};
    int obj = 0;
    int r = document(p, end, 1, &w, &obj);
    if (r != J_OK || !obj)
        return r == J_UNSURE ? -1 : 0;
    struct span pick = top[0];
    if (!is_string(pick) && top[1].p && *top[1].p == '{') {
        struct want wi = {ipam_names, 1, sub};
        struct scan sc = {top[1].p, top[1].e, 1};
        (void)object(&sc, 1, &wi); /* validated above */
        pick = sub[0];
    }
    if (!is_string(pick))
        return 0;
    return ascii_value(pick, out, cap) ? 1 : -1;
}

/* Connected to the agent, or -1: no agent answers (run in-process). */
static int agent_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (!n || n > sizeof a.sun_path)
        return -1;
    memcpy(a.sun_path, path, n);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval t = {0, CONNECT_TIMEOUT_MS * 1000};
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t); /* bounds a full backlog */
    int r;
    do
        r = connect(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        close(fd);
        return -1;
    }
    t.tv_sec = ANSWER_TIMEOUT_S;
    t.tv_usec = 0;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
    return fd;
}

static int no_answer(const char *path, const char *why, const char *details)
{
    struct buf m = {0};
    puts_(&m, "muslind agent at ");
    puts_(&m, path);
    puts_(&m, " did not answer: ");
    puts_(&m, why);
    return cni_error(11, (const char *)m.p, details);
}

static int forward(int fd, const char *path)
{
    struct buf env = {0}, head = {0}, tail = {0};
    for (char **e = environ; *e; e++)
        if ((!strncmp(*e, "CNI_", 4) || !strncmp(*e, "MUSLIN_", 7)) && strchr(*e, '='))
            put(&env, *e, strlen(*e) + 1); /* KEY=VALUE and its NUL */
    const char *plugin = ipam_plugin ? "ipam" : "cni";
    puts_(&head, MAGIC);
    put_be32(&head, (uint32_t)strlen(plugin));
    puts_(&head, plugin);
    put_be32(&head, (uint32_t)env.len);
    put_be32(&tail, (uint32_t)in.len);
    struct iovec iov[4] = {{head.p, head.len}, {env.p, env.len}, {tail.p, tail.len}, {in.p, in.len}};
    int sent = send_all(fd, iov, 4), send_errno = errno;
    if (sent < 0 && send_errno != EPIPE && send_errno != ECONNRESET)
        return no_answer(path, errno_text(send_errno), errno_name(send_errno));
    /* Even when it stopped reading (a request over its limits), muslind may have answered. */
    unsigned char h[12];
    int r = recv_exact(fd, h, sizeof h);
    if (sent < 0 && r != 0)
        return no_answer(path, errno_text(send_errno), errno_name(send_errno));
    if (r < 0)
        return no_answer(path, errno_text(errno), errno_name(errno));
    if (r > 0)
        return no_answer(path, "the connection closed before the answer", "EOFError");
    uint32_t len = get_be32(h + 8);
    if (memcmp(h, MAGIC, 4) || len > MAX_ANSWER)
        return no_answer(path, "malformed answer (not framing 2)", "ValueError");
    int rc = (int32_t)get_be32(h + 4);
    struct buf out = {0};
    reserve(&out, (size_t)len + 1);
    r = recv_exact(fd, out.p, len);
    if (r < 0)
        return no_answer(path, errno_text(errno), errno_name(errno));
    if (r > 0)
        return no_answer(path, "the connection closed in the middle of the answer", "EOFError");
    out.len = len;
    if (len && out.p[len - 1] != '\n')
        out.p[out.len++] = '\n';
    close(fd);
    return emit(&out, rc);
}

/* Hand over to the Python entry (in-process work); stdin as it was. Returns only on failure. */
static int exec_python(void)
{
    char py[4096];
    const char *name = ipam_plugin ? "muslin-ipam-py" : "muslin-cni-py";
#ifdef MUSLIN_PY_DIR
    snprintf(py, sizeof py, "%s/%s", MUSLIN_PY_DIR, name);
#else
    char self[4000];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    char *slash = strrchr(self, '/');
    if (slash)
        *slash = 0;
    snprintf(py, sizeof py, "%s/%s", self, name);
#endif
    if (have_in) {
        int fd = memfd_create("muslin-cni-stdin", MFD_CLOEXEC);
        if (fd < 0)
            fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0 || write_all(fd, in.p, in.len) < 0 || lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0) {
            struct buf m = {0};
            puts_(&m, "cannot hand stdin to the in-process plugin: ");
            puts_(&m, errno_text(errno));
            return cni_error(999, (const char *)m.p, "OSError");
        }
        close(fd);
    }
    char *argv[] = {py, NULL};
    execv(py, argv);
    struct buf m = {0};
    puts_(&m, "no muslind agent answers and the in-process plugin ");
    puts_(&m, py);
    puts_(&m, " cannot start: ");
    puts_(&m, errno_text(errno));
    return cni_error(999, (const char *)m.p, errno_name(errno));
}

static int read_stdin(void)
{
    if (read_all(0, &in) < 0) {
        struct buf m = {0};
        puts_(&m, "cannot read stdin: ");
        puts_(&m, errno_text(errno));
        return cni_error(5, (const char *)m.p, NULL);
    }
    have_in = 1;
    return 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *base = argv[0] ? strrchr(argv[0], '/') : NULL;
    base = base ? base + 1 : argv[0] ? argv[0] : "";
    ipam_plugin = strstr(base, "ipam") != NULL;
    const char *cmd = getenv("CNI_COMMAND");
    if (!cmd || !*cmd) {
        fprintf(stderr, "%s: Muslin CNI %splugin; CNI protocol versions supported: %s\n",
                ipam_plugin ? "muslin-ipam" : "muslin-cni", ipam_plugin ? "IPAM " : "", SUPPORTED);
        return 0;
    }
    if (!strcmp(cmd, "VERSION")) {
        if (!isatty(0) && read_stdin())
            return 1;
        int rc = version();
        return rc >= 0 ? rc : exec_python();
    }
    const char *path = getenv("MUSLIN_AGENT_SOCKET");
    char conf_path[4096];
    if (!path) {
        if (read_stdin())
            return 1;
        int r = agent_socket(conf_path, sizeof conf_path);
        if (r < 0)
            return exec_python();
        path = r ? conf_path : DEFAULT_SOCKET;
    }
    int fd = agent_connect(path);
    if (fd < 0)
        return exec_python();
    if (!have_in && read_stdin())
        return 1;
    return forward(fd, path);
}
