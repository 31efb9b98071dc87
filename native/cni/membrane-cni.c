/*
 * membrane-cni: the CNI 1.1 plugin of Membrane, as a thin shim.
 *
 * A runtime executes this program with the CNI_* environment and the network
 * configuration on stdin. It forwards both to the agent over the agent's Unix
 * socket (POST /v1/cni) and prints the agent's answer with the agent's exit
 * code: every CNI decision (configuration and environment validation, result
 * shapes per cniVersion, prevResult, error codes) is made in the agent
 * (src/cni/). The shim itself only does what needs no agent:
 *
 *   - CNI_COMMAND missing or unknown: code 4; VERSION: answered here;
 *   - reading stdin (at most MAX_STDIN bytes), checking it is one JSON
 *     object (code 6 otherwise) and reading the two fields the shim relies
 *     on: "cniVersion" (required, code 7, and supported, code 1: the shim's
 *     own errors are written in it) and "socket" (an absolute path, code 7;
 *     absent: DEFAULT_SOCKET);
 *   - the agent unreachable (code 50 for STATUS, 11 otherwise), or closing
 *     the connection before a complete answer (the same codes: try again),
 *     or not answering within TIMEOUT_MS / answering something that is not a
 *     CNI answer (code 102).
 *
 * Errors go to stdout as {"cniVersion","code","msg","details"} with exit 1,
 * as the CNI spec asks. Statically linked, no dependencies: the file can be
 * copied into any runtime's plugin directory. Every buffer is bounded and
 * every system call checked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/membrane/membrane.sock"
#define DEFAULT_VERSION "1.1.0"
#define MAX_STDIN (4u << 20)	 /* network configuration, prevResult included */
#define MAX_RESPONSE (32u << 20) /* the agent's answer (an ADD result echoes prevResult) */
#define TIMEOUT_MS 30000	 /* no answer from the agent within this: code 102 */
#define EXIT_HEADER "membrane-cni-exit-code"

/* CNI error codes (spec) and Membrane's own. */
enum {
	CODE_INCOMPATIBLE_VERSION = 1,
	CODE_INVALID_ENV = 4,
	CODE_IO_FAILURE = 5,
	CODE_DECODE_FAILURE = 6,
	CODE_INVALID_CONFIG = 7,
	CODE_TRY_AGAIN_LATER = 11,
	CODE_NOT_AVAILABLE = 50,
	CODE_AGENT_FAILURE = 102,
};

static const char *const SUPPORTED[] = { "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0" };
#define N_SUPPORTED (sizeof(SUPPORTED) / sizeof(SUPPORTED[0]))

/* The environment forwarded to the agent (nothing else of the runtime's environment is sent). */
static const char *const FORWARDED_ENV[] = { "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH" };
#define N_FORWARDED (sizeof(FORWARDED_ENV) / sizeof(FORWARDED_ENV[0]))

/* ------------------------------------------------------------------ growable byte buffer */

struct buf {
	char *p;
	size_t len, cap;
	int oom; /* an append failed: the content is incomplete */
};

static void buf_reserve(struct buf *b, size_t more)
{
	if (b->oom)
		return;
	if (more > SIZE_MAX / 2 - b->len) {
		b->oom = 1;
		return;
	}
	if (b->len + more + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = 1;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void buf_add(struct buf *b, const void *s, size_t n)
{
	buf_reserve(b, n);
	if (b->oom)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->oom = 1;
		return;
	}
	buf_reserve(b, (size_t)n);
	if (b->oom)
		return;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* The JSON.stringify escape of one byte that needs one (control characters, quote, backslash); others as they are. */
static void json_escape_byte(struct buf *b, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";
	const char *esc = NULL;
	switch (c) {
	case '"': esc = "\\\""; break;
	case '\\': esc = "\\\\"; break;
	case '\b': esc = "\\b"; break;
	case '\f': esc = "\\f"; break;
	case '\n': esc = "\\n"; break;
	case '\r': esc = "\\r"; break;
	case '\t': esc = "\\t"; break;
	default:
		if (c < 0x20) {
			char u[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
			buf_add(b, u, 6);
			return;
		}
		buf_add(b, &c, 1);
		return;
	}
	buf_str(b, esc);
}

/* A JSON string literal of bytes, escaped as JSON.stringify escapes (bytes >= 0x80 as they are). */
static void buf_json_string(struct buf *b, const char *s, size_t n)
{
	buf_add(b, "\"", 1);
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		buf_add(b, s + run, i - run);
		json_escape_byte(b, c);
		run = i + 1;
	}
	buf_add(b, s + run, n - run);
	buf_add(b, "\"", 1);
}

/* ------------------------------------------------------------------ output */

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Print a CNI error on stdout and return the plugin's exit status (1). */
static int cni_error(const char *version, int code, const char *details, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int cni_error(const char *version, int code, const char *details, const char *fmt, ...)
{
	char msg[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	struct buf b = { 0 };
	buf_str(&b, "{\"cniVersion\":");
	buf_json_string(&b, version, strlen(version));
	buf_printf(&b, ",\"code\":%d,\"msg\":", code);
	buf_json_string(&b, msg, strlen(msg));
	if (details && *details) {
		buf_str(&b, ",\"details\":");
		buf_json_string(&b, details, strlen(details));
	}
	buf_str(&b, "}\n");
	if (b.oom || write_all(STDOUT_FILENO, b.p, b.len) < 0) {
		free(b.p);
		return 1;
	}
	free(b.p);
	return 1;
}

/* "ENOENT (No such file or directory)" */
static const char *errno_text(int e, char *out, size_t n)
{
	const char *name = strerrorname_np(e);
	snprintf(out, n, "%s (%s)", name ? name : "error", strerror(e));
	return out;
}

/* ------------------------------------------------------------------ JSON: validate, find top-level fields */

/* One top-level member's value: where it is and whether it is a string. */
struct jfield {
	const char *start; /* the value's first byte (the quote of a string), NULL when absent */
	const char *end;   /* one past its last byte */
	int is_string;
};

struct jdoc {
	int is_object;		/* the document is one JSON object */
	struct jfield socket;	/* last "socket" member (JSON.parse keeps the last duplicate) */
	struct jfield version;	/* last "cniVersion" member */
	struct jfield error;	/* last "error" member (agent error bodies) */
	size_t err_at;		/* invalid document: byte offset of the problem */
	const char *err_what;	/* invalid document: what was expected or found */
};

static int is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
	if (end - p < 4)
		return -1;
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);
		if (h < 0)
			return -1;
		v = v << 4 | (unsigned)h;
	}
	*out = v;
	return 0;
}

/* Skip a string starting at its opening quote; returns one past the closing quote or NULL. */
static const char *skip_string(const char *p, const char *end, const char **why)
{
	p++;
	while (p < end) {
		unsigned char c = (unsigned char)*p;
		if (c == '"')
			return p + 1;
		if (c < 0x20) {
			*why = "a control character inside a string";
			return NULL;
		}
		if (c == '\\') {
			if (p + 1 >= end)
				break;
			char e = p[1];
			if (e == 'u') {
				unsigned v;
				if (hex4(p + 2, end, &v) < 0) {
					*why = "a bad \\u escape";
					return NULL;
				}
				p += 6;
				continue;
			}
			if (!strchr("\"\\/bfnrt", e) || e == '\0') {
				*why = "a bad escape";
				return NULL;
			}
			p += 2;
			continue;
		}
		p++;
	}
	*why = "an unterminated string";
	return NULL;
}

static const char *skip_number(const char *p, const char *end)
{
	if (p < end && *p == '-')
		p++;
	if (p >= end)
		return NULL;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	else
		return NULL;
	if (p < end && *p == '.') {
		p++;
		if (p >= end || *p < '0' || *p > '9')
			return NULL;
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || *p < '0' || *p > '9')
			return NULL;
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	return p;
}

/* Is the string token [p, end) (quotes included) exactly the ASCII text `want`, escapes decoded? */
static int string_equals(const char *p, const char *end, const char *want)
{
	p++, end--;
	while (p < end) {
		unsigned c = (unsigned char)*p;
		if (c == '\\') {
			char e = p[1];
			if (e == 'u') {
				if (hex4(p + 2, end, &c) < 0)
					return 0;
				p += 6;
			} else {
				const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
				const char *at = strchr(from, e);
				if (!at)
					return 0;
				c = (unsigned char)to[at - from];
				p += 2;
			}
		} else {
			p++;
		}
		if (*want == '\0' || c != (unsigned char)*want)
			return 0;
		want++;
	}
	return *want == '\0';
}

/*
 * Validate a whole document as JSON.parse does (RFC 8259: one value, JSON
 * whitespace around it, no trailing commas, no comments) without recursion,
 * and record the top-level members we look for. Returns 0 when valid.
 */
static int json_scan(const char *doc, size_t len, struct jdoc *out)
{
	const char *p = doc, *end = doc + len, *why = "a value";
	memset(out, 0, sizeof(*out));
	/* The container open at each depth, 'o' or 'a': the depth cannot exceed len. */
	char *stack = malloc(len + 1);
	if (!stack) {
		out->err_what = "memory for the document";
		return -1;
	}
	size_t depth = 0;
	struct jfield *want = NULL; /* the top-level member whose value comes next */
	struct jfield *open_member = NULL; /* a top-level member whose value is a container still open */
	enum { VALUE, AFTER_VALUE, KEY_OR_END, KEY } state = VALUE;

	for (;;) {
		while (p < end && is_ws(*p))
			p++;
		if (state == VALUE) {
			if (p >= end) {
				why = "a value";
				goto bad;
			}
			const char *v = p;
			if (*p == '{' || *p == '[') {
				if (depth == 0 && *p == '{')
					out->is_object = 1;
				if (want) {
					want->start = v;
					want->end = NULL;
					want->is_string = 0;
					open_member = want;
					want = NULL;
				}
				stack[depth++] = *p == '{' ? 'o' : 'a';
				p++;
				state = *v == '{' ? KEY_OR_END : VALUE;
				if (*v == '[') {
					while (p < end && is_ws(*p))
						p++;
					if (p < end && *p == ']') { /* an empty array */
						p++;
						depth--;
						state = AFTER_VALUE;
						goto closed;
					}
				}
				continue;
			}
			if (*p == '"') {
				p = skip_string(p, end, &why);
				if (!p) {
					p = v;
					goto bad;
				}
			} else if (*p == '-' || (*p >= '0' && *p <= '9')) {
				p = skip_number(p, end);
				if (!p) {
					p = v;
					why = "a valid number";
					goto bad;
				}
			} else if (end - p >= 4 && !memcmp(p, "true", 4)) {
				p += 4;
			} else if (end - p >= 5 && !memcmp(p, "false", 5)) {
				p += 5;
			} else if (end - p >= 4 && !memcmp(p, "null", 4)) {
				p += 4;
			} else {
				why = "a value";
				goto bad;
			}
			if (want) {
				want->start = v;
				want->end = p;
				want->is_string = *v == '"';
				want = NULL;
			}
			state = AFTER_VALUE;
			continue;
		}
		if (state == AFTER_VALUE) {
			if (depth == 0) {
				if (p != end) {
					why = "the end of the document";
					goto bad;
				}
				free(stack);
				return 0;
			}
			char top = stack[depth - 1];
			if (p < end && *p == ',') {
				p++;
				state = top == 'o' ? KEY : VALUE;
				continue;
			}
			if (p < end && *p == (top == 'o' ? '}' : ']')) {
				p++;
				depth--;
				goto closed;
			}
			why = top == 'o' ? "',' or '}'" : "',' or ']'";
			goto bad;
		}
		/* KEY_OR_END (right after '{'), KEY (after ',') */
		if (state == KEY_OR_END && p < end && *p == '}') {
			p++;
			depth--;
			state = AFTER_VALUE;
			goto closed;
		}
		if (p >= end || *p != '"') {
			why = "a property name in double quotes";
			goto bad;
		}
		const char *k = p;
		p = skip_string(p, end, &why);
		if (!p) {
			p = k;
			goto bad;
		}
		want = NULL;
		if (depth == 1) {
			if (string_equals(k, p, "socket"))
				want = &out->socket;
			else if (string_equals(k, p, "cniVersion"))
				want = &out->version;
			else if (string_equals(k, p, "error"))
				want = &out->error;
		}
		while (p < end && is_ws(*p))
			p++;
		if (p >= end || *p != ':') {
			why = "':' after a property name";
			goto bad;
		}
		p++;
		state = VALUE;
		continue;
	closed:
		/* A container just closed: the end of a top-level member's value when back at depth 1. */
		if (open_member && depth == 1) {
			open_member->end = p;
			open_member = NULL;
		}
	}
bad:
	free(stack);
	out->err_at = (size_t)(p - doc);
	out->err_what = why;
	return -1;
}

static void utf8_put(struct buf *b, unsigned cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp, n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
	} else {
		u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)), u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
	}
	buf_add(b, u, n);
}

/*
 * Decode a (validated) string token into bytes; a lone surrogate becomes
 * U+FFFD as Node turns it into UTF-8. Sets *nul when the text holds a NUL.
 */
static void json_decode_string(const char *p, const char *end, struct buf *b, int *nul)
{
	p++, end--;
	*nul = 0;
	while (p < end) {
		if (*p != '\\') {
			buf_add(b, p, 1);
			p++;
			continue;
		}
		char e = p[1];
		if (e != 'u') {
			const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
			buf_add(b, to + (strchr(from, e) - from), 1);
			p += 2;
			continue;
		}
		unsigned cp, lo;
		hex4(p + 2, end, &cp);
		p += 6;
		if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u' && hex4(p + 2, end, &lo) == 0 && lo >= 0xdc00 &&
		    lo <= 0xdfff) {
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			p += 6;
		} else if (cp >= 0xd800 && cp <= 0xdfff) {
			cp = 0xfffd;
		}
		if (cp == 0)
			*nul = 1;
		utf8_put(b, cp);
	}
}

/*
 * A string token as JSON.stringify writes the string it stands for: escapes
 * that need none decoded, control characters, quote and backslash escaped,
 * lone surrogates as \uXXXX (lower-case hex).
 */
static void json_restringify(const char *p, const char *end, struct buf *b)
{
	static const char hex[] = "0123456789abcdef";
	buf_add(b, "\"", 1);
	p++, end--;
	while (p < end) {
		if (*p != '\\') {
			buf_add(b, p, 1);
			p++;
			continue;
		}
		char e = p[1];
		if (e != 'u') {
			if (e == '/')
				buf_add(b, "/", 1);
			else
				buf_add(b, p, 2);
			p += 2;
			continue;
		}
		unsigned cp, lo;
		hex4(p + 2, end, &cp);
		p += 6;
		if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u' && hex4(p + 2, end, &lo) == 0 && lo >= 0xdc00 &&
		    lo <= 0xdfff) {
			utf8_put(b, 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00));
			p += 6;
			continue;
		}
		if (cp >= 0xd800 && cp <= 0xdfff) {
			char u[6] = { '\\', 'u', hex[cp >> 12], hex[(cp >> 8) & 15], hex[(cp >> 4) & 15], hex[cp & 15] };
			buf_add(b, u, 6);
			continue;
		}
		if (cp < 0x20 || cp == '"' || cp == '\\') {
			json_escape_byte(b, (unsigned char)cp);
			continue;
		}
		utf8_put(b, cp);
	}
	buf_add(b, "\"", 1);
}

/* A value token without the whitespace outside its strings (how JSON.stringify would print most values). */
static void json_compact(const char *p, const char *end, struct buf *b)
{
	while (p < end) {
		if (*p == '"') {
			const char *why, *q = skip_string(p, end, &why);
			if (!q)
				q = end;
			json_restringify(p, q, b);
			p = q;
			continue;
		}
		if (!is_ws(*p))
			buf_add(b, p, 1);
		p++;
	}
}

/* ------------------------------------------------------------------ stdin */

/* Read stdin entirely: 0, -1 with errno (read error), or -2 (larger than MAX_STDIN). */
static int read_stdin(struct buf *in)
{
	char chunk[65536];
	for (;;) {
		ssize_t n = read(STDIN_FILENO, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* No stdin at all (closed descriptor): an empty configuration. */
			if (errno == EBADF)
				return 0;
			return -1;
		}
		if (n == 0)
			return 0;
		if (in->len + (size_t)n > MAX_STDIN)
			return -2;
		buf_add(in, chunk, (size_t)n);
		if (in->oom) {
			errno = ENOMEM;
			return -1;
		}
	}
}

/* ------------------------------------------------------------------ the agent */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

enum call_result { CALL_OK, CALL_UNREACHABLE, CALL_LOST, CALL_TIMEOUT, CALL_TOO_BIG, CALL_OOM };

/*
 * One HTTP/1.1 exchange over the Unix socket: connect, send the request,
 * read the answer until Content-Length bytes of body (or the end of the
 * stream when there is none). *err is the errno of a failed system call.
 */
static enum call_result agent_call(const char *socket_path, const struct buf *req, struct buf *resp, int *err, const char **where)
{
	*err = 0;
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1); /* length checked by the caller */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = errno, *where = "socket";
		return CALL_UNREACHABLE;
	}
	int64_t deadline = now_ms() + TIMEOUT_MS;
	struct timeval tv = { .tv_sec = TIMEOUT_MS / 1000, .tv_usec = 0 };
	/* A full listen backlog makes connect() wait: bounded by the send timeout. */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
		*err = errno, *where = "setsockopt";
		close(fd);
		return CALL_UNREACHABLE;
	}
	int r;
	do
		r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		*err = errno, *where = "connect";
		close(fd);
		return errno == EAGAIN || errno == EWOULDBLOCK ? CALL_TIMEOUT : CALL_UNREACHABLE;
	}
	size_t off = 0;
	while (off < req->len) {
		ssize_t n = send(fd, req->p + off, req->len - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			*err = errno, *where = "send";
			close(fd);
			return errno == EAGAIN || errno == EWOULDBLOCK ? CALL_TIMEOUT : CALL_LOST;
		}
		off += (size_t)n;
	}
	size_t header_end = 0, body_len = 0;
	int have_length = 0;
	for (;;) {
		if (header_end && have_length && resp->len >= header_end + body_len)
			break;
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			close(fd);
			return CALL_TIMEOUT;
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		r = poll(&pfd, 1, (int)left);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			*err = errno, *where = "poll";
			close(fd);
			return CALL_LOST;
		}
		if (r == 0)
			continue; /* the deadline check above ends the loop */
		char chunk[65536];
		ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			*err = errno, *where = "recv";
			close(fd);
			return CALL_LOST;
		}
		if (n == 0) {
			close(fd);
			/* The end of the stream: a complete answer only without Content-Length. */
			if (header_end && !have_length)
				return CALL_OK;
			return CALL_LOST;
		}
		if (resp->len + (size_t)n > MAX_RESPONSE) {
			close(fd);
			return CALL_TOO_BIG;
		}
		buf_add(resp, chunk, (size_t)n);
		if (resp->oom) {
			close(fd);
			return CALL_OOM;
		}
		if (!header_end) {
			char *h = memmem(resp->p, resp->len, "\r\n\r\n", 4);
			if (h) {
				header_end = (size_t)(h - resp->p) + 4;
				/* Content-Length, case-insensitively, at the start of a header line. */
				for (char *line = strstr(resp->p, "\r\n"); line && line < h; line = strstr(line + 2, "\r\n")) {
					if (!strncasecmp(line + 2, "content-length:", 15)) {
						char *e;
						errno = 0;
						unsigned long long v = strtoull(line + 17, &e, 10);
						if (errno == 0 && v <= MAX_RESPONSE) {
							body_len = (size_t)v;
							have_length = 1;
						}
					}
				}
			}
		}
	}
	close(fd);
	return CALL_OK;
}

/* The value of a response header (case-insensitive name), copied into out; 0 when found. */
static int header_value(const char *resp, size_t header_end, const char *name, char *out, size_t n)
{
	size_t nl = strlen(name);
	for (const char *line = strstr(resp, "\r\n"); line && (size_t)(line - resp) + 2 < header_end; line = strstr(line + 2, "\r\n")) {
		const char *h = line + 2;
		if (strncasecmp(h, name, nl) || h[nl] != ':')
			continue;
		h += nl + 1;
		while (*h == ' ' || *h == '\t')
			h++;
		const char *e = strstr(h, "\r\n");
		size_t len = e ? (size_t)(e - h) : strlen(h);
		while (len && (h[len - 1] == ' ' || h[len - 1] == '\t'))
			len--;
		if (len >= n)
			return -1;
		memcpy(out, h, len);
		out[len] = '\0';
		return 0;
	}
	return -1;
}

/* ------------------------------------------------------------------ main */

static int is_supported(const char *v)
{
	for (size_t i = 0; i < N_SUPPORTED; i++)
		if (!strcmp(v, SUPPORTED[i]))
			return 1;
	return 0;
}

static int cmd_version(const struct buf *in)
{
	struct buf out = { 0 };
	struct jdoc d;
	buf_str(&out, "{\"cniVersion\":");
	/* As before: the configuration's cniVersion when it is a non-empty string, whatever else is wrong. */
	if (in->len && json_scan(in->p, in->len, &d) == 0 && d.version.start && d.version.is_string && d.version.end - d.version.start > 2)
		json_restringify(d.version.start, d.version.end, &out);
	else
		buf_str(&out, "\"" DEFAULT_VERSION "\"");
	buf_str(&out, ",\"supportedVersions\":[");
	for (size_t i = 0; i < N_SUPPORTED; i++)
		buf_printf(&out, "%s\"%s\"", i ? "," : "", SUPPORTED[i]);
	buf_str(&out, "]}\n");
	int rc = out.oom || write_all(STDOUT_FILENO, out.p, out.len) < 0 ? 1 : 0;
	free(out.p);
	return rc;
}

int main(void)
{
	/* A runtime that stops reading our stdout must not kill us with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	const char *command = getenv("CNI_COMMAND");
	if (!command || !*command)
		return cni_error(DEFAULT_VERSION, CODE_INVALID_ENV, NULL,
				 "environment variable CNI_COMMAND is required (ADD, DEL, CHECK, STATUS, GC or VERSION)");
	static const char *const COMMANDS[] = { "ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION" };
	int known = 0;
	for (size_t i = 0; i < sizeof(COMMANDS) / sizeof(COMMANDS[0]); i++)
		known |= !strcmp(command, COMMANDS[i]);
	if (!known) {
		struct buf q = { 0 };
		buf_json_string(&q, command, strlen(command));
		int rc = cni_error(DEFAULT_VERSION, CODE_INVALID_ENV, NULL,
				   "environment variable CNI_COMMAND: %s is not one of ADD, DEL, CHECK, STATUS, GC, VERSION", q.oom ? "?" : q.p);
		free(q.p);
		return rc;
	}
	int status = !strcmp(command, "STATUS");

	struct buf in = { 0 };
	int rr = read_stdin(&in);
	if (!strcmp(command, "VERSION")) {
		int rc = cmd_version(rr == 0 ? &in : &(struct buf){ 0 });
		free(in.p);
		return rc;
	}
	char ebuf[160];
	if (rr == -1)
		return cni_error(DEFAULT_VERSION, CODE_IO_FAILURE, NULL, "reading the network configuration from stdin: %s",
				 errno_text(errno, ebuf, sizeof(ebuf)));
	if (rr == -2)
		return cni_error(DEFAULT_VERSION, CODE_DECODE_FAILURE, NULL,
				 "failed to decode network configuration from stdin: it is larger than %u bytes", MAX_STDIN);

	struct jdoc d;
	if (json_scan(in.p ? in.p : "", in.len, &d) < 0) {
		if (d.err_at >= in.len)
			return cni_error(DEFAULT_VERSION, CODE_DECODE_FAILURE, NULL,
					 "failed to decode network configuration from stdin: unexpected end of input (expected %s)", d.err_what);
		return cni_error(DEFAULT_VERSION, CODE_DECODE_FAILURE, NULL,
				 "failed to decode network configuration from stdin: expected %s at byte %zu", d.err_what, d.err_at);
	}
	if (!d.is_object)
		return cni_error(DEFAULT_VERSION, CODE_DECODE_FAILURE, NULL, "network configuration must be a JSON object");

	/*
	 * The two fields the shim itself relies on: cniVersion (errors about
	 * reaching the agent are written in it) and socket (where the agent is).
	 * Every other check is the agent's.
	 */
	if (!d.version.start || !d.version.is_string || d.version.end - d.version.start <= 2)
		return cni_error(DEFAULT_VERSION, CODE_INVALID_CONFIG, NULL,
				 "network configuration: field \"cniVersion\" is required (a string such as \"1.1.0\")");
	char version[16];
	{
		struct buf v = { 0 };
		int nul;
		json_decode_string(d.version.start, d.version.end, &v, &nul);
		if (v.oom || nul || v.len >= sizeof(version) || !is_supported(v.p)) {
			struct buf all = { 0 };
			for (size_t i = 0; i < N_SUPPORTED; i++)
				buf_printf(&all, "%s%s", i ? ", " : "", SUPPORTED[i]);
			int rc = cni_error(DEFAULT_VERSION, CODE_INCOMPATIBLE_VERSION, NULL,
					   "network configuration: cniVersion \"%s\" is not supported (supported: %s)", v.oom ? "?" : v.p,
					   all.oom ? "?" : all.p);
			free(all.p);
			free(v.p);
			return rc;
		}
		memcpy(version, v.p, v.len + 1);
		free(v.p);
	}

	/* Where the agent is: the configuration's "socket" (an absolute path), else the default. */
	char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	if (d.socket.start) {
		struct buf s = { 0 };
		int nul = 0;
		if (d.socket.is_string)
			json_decode_string(d.socket.start, d.socket.end, &s, &nul);
		if (!d.socket.is_string || s.len == 0 || s.p[0] != '/' || nul) {
			struct buf shown = { 0 };
			json_compact(d.socket.start, d.socket.end, &shown);
			int rc = cni_error(DEFAULT_VERSION, CODE_INVALID_CONFIG, NULL,
					   "network configuration: field \"socket\" must be an absolute path, got %s", shown.oom ? "?" : shown.p);
			free(shown.p);
			free(s.p);
			return rc;
		}
		if (s.oom || s.len >= sizeof(socket_path)) {
			struct buf shown = { 0 };
			json_restringify(d.socket.start, d.socket.end, &shown);
			int rc = cni_error(DEFAULT_VERSION, CODE_INVALID_CONFIG, NULL,
					   "network configuration: field \"socket\": %s is longer than the %zu bytes a Unix socket path can have",
					   shown.oom ? "?" : shown.p, sizeof(socket_path) - 1);
			free(shown.p);
			free(s.p);
			return rc;
		}
		memcpy(socket_path, s.p, s.len + 1);
		free(s.p);
	} else {
		memcpy(socket_path, DEFAULT_SOCKET, sizeof(DEFAULT_SOCKET));
	}
	/* The request: {"env":{CNI_*},"stdin":"<the configuration>"}. */
	struct buf body = { 0 };
	buf_str(&body, "{\"env\":{");
	int first = 1;
	for (size_t i = 0; i < N_FORWARDED; i++) {
		const char *v = getenv(FORWARDED_ENV[i]);
		if (!v)
			continue;
		buf_printf(&body, "%s\"%s\":", first ? "" : ",", FORWARDED_ENV[i]);
		buf_json_string(&body, v, strlen(v));
		first = 0;
	}
	buf_str(&body, "},\"stdin\":");
	buf_json_string(&body, in.p ? in.p : "", in.len);
	buf_str(&body, "}");
	free(in.p);
	struct buf req = { 0 };
	buf_printf(&req,
		   "POST /v1/cni HTTP/1.1\r\nHost: membrane-agent\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
		   "Connection: close\r\n\r\n",
		   body.len);
	buf_add(&req, body.p ? body.p : "", body.len);
	free(body.p);
	if (req.oom)
		return cni_error(version, CODE_AGENT_FAILURE, NULL, "out of memory building the request to the membrane agent");

	struct buf resp = { 0 };
	int err;
	const char *where = "";
	enum call_result cr = agent_call(socket_path, &req, &resp, &err, &where);
	free(req.p);
	int unavailable = status ? CODE_NOT_AVAILABLE : CODE_TRY_AGAIN_LATER;
	int rc;
	switch (cr) {
	case CALL_UNREACHABLE:
		rc = cni_error(version, unavailable, "is membrane-agent running and is \"socket\" in the network configuration right?",
			       "cannot reach the membrane agent at %s: %s %s", socket_path, where, errno_text(err, ebuf, sizeof(ebuf)));
		free(resp.p);
		return rc;
	case CALL_LOST:
		rc = cni_error(version, unavailable, "the agent restarts on its own or under its supervisor; the request can be retried",
			       "the membrane agent at %s closed the connection before answering (%s); try again", socket_path,
			       err ? errno_text(err, ebuf, sizeof(ebuf)) : "the connection ended");
		free(resp.p);
		return rc;
	case CALL_TIMEOUT:
		free(resp.p);
		return cni_error(version, CODE_AGENT_FAILURE, NULL, "the membrane agent at %s did not answer within %d s", socket_path,
				 TIMEOUT_MS / 1000);
	case CALL_TOO_BIG:
		free(resp.p);
		return cni_error(version, CODE_AGENT_FAILURE, NULL, "the answer of the membrane agent at %s is larger than %u bytes", socket_path,
				 MAX_RESPONSE);
	case CALL_OOM:
		free(resp.p);
		return cni_error(version, CODE_AGENT_FAILURE, NULL, "out of memory reading the answer of the membrane agent at %s", socket_path);
	case CALL_OK:
		break;
	}

	/* "HTTP/1.1 200 OK" ... the exit code header ... the body is what we print. */
	char *h = memmem(resp.p, resp.len, "\r\n\r\n", 4);
	int http_status = 0;
	if (h && resp.len > 12 && !strncmp(resp.p, "HTTP/1.", 7))
		http_status = atoi(resp.p + 9);
	size_t header_end = h ? (size_t)(h - resp.p) + 4 : 0;
	const char *bodyp = h ? h + 4 : "";
	size_t blen = h ? resp.len - header_end : 0;
	char exit_text[8];
	char *e = NULL;
	long exit_code = -1;
	if (h && header_value(resp.p, header_end, EXIT_HEADER, exit_text, sizeof(exit_text)) == 0) {
		errno = 0;
		exit_code = strtol(exit_text, &e, 10);
		if (errno || *e || e == exit_text || exit_code < 0 || exit_code > 255)
			exit_code = -1;
	}
	/* The body is exactly Content-Length bytes when the header is there; a chunked body is not a CNI answer. */
	char len_text[24], te[32];
	if (h && header_value(resp.p, header_end, "content-length", len_text, sizeof(len_text)) == 0) {
		errno = 0;
		unsigned long long cl = strtoull(len_text, &e, 10);
		if (!errno && *e == '\0' && cl < blen)
			blen = (size_t)cl;
	}
	if (h && header_value(resp.p, header_end, "transfer-encoding", te, sizeof(te)) == 0)
		exit_code = -1;
	if (http_status != 200 || exit_code < 0) {
		/* Not a CNI answer: an older agent without the route, an internal error. Name what it said. */
		struct jdoc ed;
		struct buf said = { 0 };
		int nul;
		if (blen && json_scan(bodyp, blen, &ed) == 0 && ed.error.start && ed.error.is_string)
			json_decode_string(ed.error.start, ed.error.end, &said, &nul);
		else
			buf_add(&said, bodyp, blen > 300 ? 300 : blen);
		rc = cni_error(version, CODE_AGENT_FAILURE, NULL, "membrane agent at %s: unexpected answer to the CNI request (HTTP %d%s%s%s)",
			       socket_path, http_status, said.len ? ": " : "", said.len && !said.oom ? said.p : "",
			       http_status == 404 ? "; is the agent older than this plugin?" : "");
		free(said.p);
		free(resp.p);
		return rc;
	}
	rc = write_all(STDOUT_FILENO, bodyp, blen) < 0 ? 1 : (int)exit_code;
	free(resp.p);
	return rc;
}
