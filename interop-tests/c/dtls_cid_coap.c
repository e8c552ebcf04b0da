/*
 * dtls_cid_coap: a DTLS 1.2 client with a pre-shared key that offers the Connection ID
 * extension of RFC 9146, and just enough CoAP (RFC 7252) on top to publish and read
 * through the gateway. No CoAP client in the package registries the tests install from
 * negotiates a connection id; Mbed TLS 3.6 does, so the DTLS here is Mbed TLS's and only
 * the few lines of CoAP are written for the tests.
 *
 *   dtls_cid_coap HOST PORT IDENTITY SECRET [--no-cid] [--own-cid HEX]
 *       [--ack-timeout MS] [--max-retransmit N] [--handshake-timeout MIN,MAX] [--debug LEVEL]
 *
 * SECRET is used byte for byte, as the gateway's key file holds it (`identity:secret`,
 * the secret the text after the first colon). After the handshake one line tells what
 * was negotiated:
 *
 *   cid peer=HEX|empty|none own=HEX|empty|none
 *
 * `peer` is the id the server asked us to put in our records, `own` the one we asked the
 * server to put in its records; `empty` is a zero-length id in a negotiated extension,
 * `none` means the extension was not negotiated (both are `none` then, also when both
 * sides sent empty ids, which Mbed TLS reports as not using the extension). Then one
 * command per stdin line, one answer line per command on stdout:
 *
 *   post PATH?QUERY PAYLOAD  ->  response CODE [PAYLOAD] | reset | timeout
 *   get PATH?QUERY           ->  response CODE [PAYLOAD] | reset | timeout
 *   observe PATH?QUERY       ->  response CODE [PAYLOAD] | reset | timeout
 *   recv MS                  ->  notification CODE [PAYLOAD] | timeout
 *   ping                     ->  pong | timeout        (an empty confirmable message)
 *   quit                     ->  (close_notify, exit 0; so does the end of stdin)
 *
 * PATH segments (split at `/`) become Uri-Path options and QUERY items (split at `&`)
 * Uri-Query options, each percent-decoded. PAYLOAD is the rest of the line after the one
 * space that ends PATH?QUERY. `observe` is a GET with Observe 0 (RFC 7641); the
 * notifications of the latest observation are acknowledged when they arrive (also while
 * another command waits) and kept, the oldest dropped beyond 16, until `recv` takes the
 * oldest or waits up to MS milliseconds for one (a kept payload is cut at 1280 bytes). A
 * payload is printed with bytes outside printable ASCII, and the backslash, as \xHH.
 * A command that cannot be sent is answered `error WHY`; a session the peer closed or a
 * transport failure is answered `closed WHY` and ends the program.
 *
 * Exit status: 0 after quit, 1 for bad arguments or setup, 2 when the handshake fails
 * (Mbed TLS's error on stderr), 3 when the session ended.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/debug.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/timing.h>
#include <mbedtls/version.h>
#include <psa/crypto.h>

#if !defined(MBEDTLS_SSL_DTLS_CONNECTION_ID)
#error "this Mbed TLS is built without MBEDTLS_SSL_DTLS_CONNECTION_ID"
#endif
#if MBEDTLS_SSL_DTLS_CONNECTION_ID_COMPAT != 0
/* The compatibility mode speaks the draft's extension number and record format, not
 * RFC 9146's, which is what the gateway is tested for. */
#error "this Mbed TLS is built with MBEDTLS_SSL_DTLS_CONNECTION_ID_COMPAT"
#endif

#define EXIT_SETUP 1
#define EXIT_HANDSHAKE 2
#define EXIT_SESSION 3

/* Requests are built in a fixed buffer, so that a long command line is refused (`error
 * request too large`) rather than sent in part; block-wise transfers are not spoken. */
#define MAX_REQUEST 2048
/* Room for any record's plaintext, so that a datagram is never read in two pieces. */
#define MAX_RECORD MBEDTLS_SSL_IN_CONTENT_LEN
#define MAX_LINE 4096
/* RFC 7252 5.10: Uri-Path and Uri-Query values are 0 to 255 bytes. */
#define MAX_OPTION_VALUE 255
#define TOKEN_LEN 4
#define MAX_KEPT_NOTIFICATIONS 16
/* A notification's payload is kept up to this size (a Block2 first block is 1024). */
#define MAX_KEPT_PAYLOAD 1280

#define COAP_CON 0
#define COAP_NON 1
#define COAP_ACK 2
#define COAP_RST 3
#define COAP_GET 0x01
#define COAP_POST 0x02
#define OPTION_OBSERVE 6
#define OPTION_URI_PATH 11
#define OPTION_URI_QUERY 15

struct settings {
    const char *host;
    const char *port;
    const char *identity;
    const char *secret;
    int offer_cid;
    unsigned char own_cid[MBEDTLS_SSL_CID_IN_LEN_MAX];
    size_t own_cid_len;
    uint32_t ack_timeout_ms;
    unsigned max_retransmit;
    uint32_t handshake_min_ms;
    uint32_t handshake_max_ms;
    int debug_level;
};

struct notification {
    unsigned code;
    size_t payload_len;
    unsigned char payload[MAX_KEPT_PAYLOAD];
};

struct client {
    mbedtls_net_context net;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_config conf;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_timing_delay_context timer;
    uint16_t next_mid;
    /* The last confirmable response we acknowledged: its retransmission (our ACK lost)
     * is acknowledged again instead of reset. */
    int have_last_con;
    uint16_t last_con_mid;
    /* The token of the latest observation, whose notifications are kept. */
    int observing;
    unsigned char observe_token[TOKEN_LEN];
    struct notification kept[MAX_KEPT_NOTIFICATIONS];
    size_t kept_first;
    size_t kept_count;
    unsigned char record[MAX_RECORD];
};

struct coap_msg {
    unsigned type;
    unsigned code;
    uint16_t mid;
    size_t token_len;
    const unsigned char *token;
    const unsigned char *payload;
    size_t payload_len;
};

struct builder {
    unsigned char buf[MAX_REQUEST];
    size_t len;
    unsigned last_option;
    const char *error;
};

/* Fixed by the program, so that a suite the gateway does not offer cannot be chosen by a
 * change in the library's defaults. CCM_8 is the one RFC 7252 9.1.3.1 mandates. */
static const int ciphersuites[] = {
    MBEDTLS_TLS_PSK_WITH_AES_128_CCM_8,
    MBEDTLS_TLS_PSK_WITH_AES_128_GCM_SHA256,
    0,
};

static void die(int status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("dtls_cid_coap: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    exit(status);
}

static void die_tls(int status, const char *what, int ret)
{
    char text[200];
    mbedtls_strerror(ret, text, sizeof text);
    die(status, "%s: %s (-0x%04x)", what, text, (unsigned) -ret);
}

static void answer(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Hex text into at most `cap` bytes; -1 when it is not even-length hex or too long. */
static long parse_hex(const char *text, unsigned char *out, size_t cap)
{
    size_t len = strlen(text);
    if (len % 2 != 0 || len / 2 > cap) {
        return -1;
    }
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_value((unsigned char) text[2 * i]);
        int lo = hex_value((unsigned char) text[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (unsigned char) (hi << 4 | lo);
    }
    return (long) (len / 2);
}

static void hex_or_empty(const unsigned char *bytes, size_t len, char *out, size_t cap)
{
    if (len == 0) {
        snprintf(out, cap, "empty");
        return;
    }
    size_t at = 0;
    for (size_t i = 0; i < len && at + 3 <= cap; i++) {
        at += (size_t) snprintf(out + at, cap - at, "%02x", bytes[i]);
    }
}

static unsigned long parse_number(const char *text, const char *what, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value > max || text[0] == '-') {
        die(EXIT_SETUP, "%s: expected a number up to %lu, got \"%s\"", what, max, text);
    }
    return value;
}

static void usage(void)
{
    die(EXIT_SETUP,
        "usage: dtls_cid_coap HOST PORT IDENTITY SECRET [--no-cid] [--own-cid HEX] "
        "[--ack-timeout MS] [--max-retransmit N] [--handshake-timeout MIN,MAX] "
        "[--debug LEVEL]");
}

static void parse_args(int argc, char **argv, struct settings *s)
{
    if (argc < 5) {
        usage();
    }
    memset(s, 0, sizeof *s);
    s->host = argv[1];
    s->port = argv[2];
    s->identity = argv[3];
    s->secret = argv[4];
    s->offer_cid = 1;
    /* RFC 7252 4.8's ACK_TIMEOUT and MAX_RETRANSMIT. */
    s->ack_timeout_ms = 2000;
    s->max_retransmit = 4;
    /* Short of RFC 6347's 60 s ceiling: a handshake the gateway drops (a wrong key) fails
     * after 1 + 2 + 4 s instead of a minute. */
    s->handshake_min_ms = 1000;
    s->handshake_max_ms = 4000;
    for (int i = 5; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--no-cid") == 0) {
            s->offer_cid = 0;
            continue;
        }
        if (value == NULL) {
            usage();
        }
        i++;
        if (strcmp(arg, "--own-cid") == 0) {
            long len = parse_hex(value, s->own_cid, sizeof s->own_cid);
            if (len < 0) {
                die(EXIT_SETUP, "--own-cid: expected up to %d bytes in hex, got \"%s\"",
                    MBEDTLS_SSL_CID_IN_LEN_MAX, value);
            }
            s->own_cid_len = (size_t) len;
        } else if (strcmp(arg, "--ack-timeout") == 0) {
            s->ack_timeout_ms = (uint32_t) parse_number(value, arg, 60000);
            if (s->ack_timeout_ms == 0) {
                die(EXIT_SETUP, "--ack-timeout must be at least 1 ms");
            }
        } else if (strcmp(arg, "--max-retransmit") == 0) {
            s->max_retransmit = (unsigned) parse_number(value, arg, 10);
        } else if (strcmp(arg, "--handshake-timeout") == 0) {
            const char *comma = strchr(value, ',');
            char min[16];
            if (comma == NULL || (size_t) (comma - value) >= sizeof min) {
                die(EXIT_SETUP, "--handshake-timeout: expected MIN,MAX in ms");
            }
            memcpy(min, value, (size_t) (comma - value));
            min[comma - value] = '\0';
            s->handshake_min_ms = (uint32_t) parse_number(min, arg, 600000);
            s->handshake_max_ms = (uint32_t) parse_number(comma + 1, arg, 600000);
            if (s->handshake_min_ms == 0 || s->handshake_max_ms < s->handshake_min_ms) {
                die(EXIT_SETUP, "--handshake-timeout: expected 0 < MIN <= MAX");
            }
        } else if (strcmp(arg, "--debug") == 0) {
            s->debug_level = (int) parse_number(value, arg, 5);
        } else {
            usage();
        }
    }
    size_t identity_len = strlen(s->identity);
    size_t secret_len = strlen(s->secret);
    if (identity_len == 0 || secret_len == 0) {
        die(EXIT_SETUP, "the identity and the secret must not be empty");
    }
}

static void debug_to_stderr(void *ctx, int level, const char *file, int line, const char *text)
{
    (void) ctx;
    fprintf(stderr, "mbedtls %d %s:%d: %s", level, file, line, text);
}

static void setup(struct client *c, const struct settings *s)
{
    int ret;
    mbedtls_net_init(&c->net);
    mbedtls_ssl_init(&c->ssl);
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);

    /* The library is built with TLS 1.3, whose code needs PSA crypto up even when only
     * DTLS 1.2 is used. */
    psa_status_t status = psa_crypto_init();
    if (status != PSA_SUCCESS) {
        die(EXIT_SETUP, "psa_crypto_init failed (%d)", (int) status);
    }
    static const char personalisation[] = "dtls_cid_coap";
    ret = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                                (const unsigned char *) personalisation,
                                sizeof personalisation - 1);
    if (ret != 0) {
        die_tls(EXIT_SETUP, "seeding the random generator", ret);
    }

    ret = mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT,
                                      MBEDTLS_SSL_TRANSPORT_DATAGRAM,
                                      MBEDTLS_SSL_PRESET_DEFAULT);
    if (ret != 0) {
        die_tls(EXIT_SETUP, "mbedtls_ssl_config_defaults", ret);
    }
    mbedtls_ssl_conf_min_tls_version(&c->conf, MBEDTLS_SSL_VERSION_TLS1_2);
    mbedtls_ssl_conf_max_tls_version(&c->conf, MBEDTLS_SSL_VERSION_TLS1_2);
    mbedtls_ssl_conf_ciphersuites(&c->conf, ciphersuites);
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_handshake_timeout(&c->conf, s->handshake_min_ms, s->handshake_max_ms);
    ret = mbedtls_ssl_conf_psk(&c->conf, (const unsigned char *) s->secret, strlen(s->secret),
                               (const unsigned char *) s->identity, strlen(s->identity));
    if (ret != 0) {
        die_tls(EXIT_SETUP, "mbedtls_ssl_conf_psk", ret);
    }
    if (s->debug_level > 0) {
        mbedtls_debug_set_threshold(s->debug_level);
        mbedtls_ssl_conf_dbg(&c->conf, debug_to_stderr, NULL);
    }
    if (s->offer_cid) {
        /* Records carrying another id than ours are dropped, not fatal: a stray datagram
         * must not end the session. */
        ret = mbedtls_ssl_conf_cid(&c->conf, s->own_cid_len, MBEDTLS_SSL_UNEXPECTED_CID_IGNORE);
        if (ret != 0) {
            die_tls(EXIT_SETUP, "mbedtls_ssl_conf_cid", ret);
        }
    }

    ret = mbedtls_ssl_setup(&c->ssl, &c->conf);
    if (ret != 0) {
        die_tls(EXIT_SETUP, "mbedtls_ssl_setup", ret);
    }
    if (s->offer_cid) {
        ret = mbedtls_ssl_set_cid(&c->ssl, MBEDTLS_SSL_CID_ENABLED, s->own_cid, s->own_cid_len);
        if (ret != 0) {
            die_tls(EXIT_SETUP, "mbedtls_ssl_set_cid", ret);
        }
    }
    mbedtls_ssl_set_timer_cb(&c->ssl, &c->timer, mbedtls_timing_set_delay,
                             mbedtls_timing_get_delay);

    /* One connected UDP socket for the whole session: the client never changes its own
     * address; a move is made by whatever sits between it and the gateway. */
    ret = mbedtls_net_connect(&c->net, s->host, s->port, MBEDTLS_NET_PROTO_UDP);
    if (ret != 0) {
        die_tls(EXIT_SETUP, "connecting the UDP socket", ret);
    }
    mbedtls_ssl_set_bio(&c->ssl, &c->net, mbedtls_net_send, mbedtls_net_recv,
                        mbedtls_net_recv_timeout);

    uint16_t mid;
    ret = mbedtls_ctr_drbg_random(&c->drbg, (unsigned char *) &mid, sizeof mid);
    if (ret != 0) {
        die_tls(EXIT_SETUP, "drawing a message id", ret);
    }
    c->next_mid = mid;
}

static void handshake(struct client *c, const struct settings *s)
{
    int ret;
    do {
        ret = mbedtls_ssl_handshake(&c->ssl);
    } while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (ret != 0) {
        die_tls(EXIT_HANDSHAKE, "handshake failed", ret);
    }

    int enabled = MBEDTLS_SSL_CID_DISABLED;
    unsigned char peer[MBEDTLS_SSL_CID_OUT_LEN_MAX];
    size_t peer_len = 0;
    ret = mbedtls_ssl_get_peer_cid(&c->ssl, &enabled, peer, &peer_len);
    if (ret != 0) {
        die_tls(EXIT_HANDSHAKE, "mbedtls_ssl_get_peer_cid", ret);
    }
    if (enabled != MBEDTLS_SSL_CID_ENABLED) {
        answer("cid peer=none own=none");
        return;
    }
    char peer_text[2 * MBEDTLS_SSL_CID_OUT_LEN_MAX + 1];
    char own_text[2 * MBEDTLS_SSL_CID_IN_LEN_MAX + 1];
    hex_or_empty(peer, peer_len, peer_text, sizeof peer_text);
    hex_or_empty(s->own_cid, s->own_cid_len, own_text, sizeof own_text);
    answer("cid peer=%s own=%s", peer_text, own_text);
}

/* --- CoAP messages ---------------------------------------------------------------- */

static void put_bytes(struct builder *b, const void *bytes, size_t len)
{
    if (b->error != NULL || len == 0) {
        return;
    }
    if (len > sizeof b->buf - b->len) {
        b->error = "request too large";
        return;
    }
    memcpy(b->buf + b->len, bytes, len);
    b->len += len;
}

static void put_byte(struct builder *b, unsigned value)
{
    unsigned char byte = (unsigned char) value;
    put_bytes(b, &byte, 1);
}

/* RFC 7252 3.1: a 4-bit nibble, with 13 and 14 announcing one or two extension bytes
 * that hold the value less 13 or less 269. */
static unsigned option_nibble(size_t value)
{
    return value < 13 ? (unsigned) value : value < 269 ? 13 : 14;
}

static void put_option_extension(struct builder *b, size_t value)
{
    if (value >= 269) {
        size_t rest = value - 269;
        put_byte(b, (unsigned) (rest >> 8));
        put_byte(b, (unsigned) (rest & 0xff));
    } else if (value >= 13) {
        put_byte(b, (unsigned) (value - 13));
    }
}

static void put_option(struct builder *b, unsigned number, const unsigned char *value, size_t len)
{
    /* Options go out in ascending order, each as a delta from the previous. */
    size_t delta = number - b->last_option;
    put_byte(b, option_nibble(delta) << 4 | option_nibble(len));
    put_option_extension(b, delta);
    put_option_extension(b, len);
    put_bytes(b, value, len);
    b->last_option = number;
}

/* Percent-decodes text[0..len) into out; -1 on a bad escape or more than `cap` bytes. */
static long percent_decode(const char *text, size_t len, unsigned char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int byte = (unsigned char) text[i];
        if (byte == '%') {
            if (len - i < 3) {
                return -1;
            }
            int hi = hex_value((unsigned char) text[i + 1]);
            int lo = hex_value((unsigned char) text[i + 2]);
            if (hi < 0 || lo < 0) {
                return -1;
            }
            byte = hi << 4 | lo;
            i += 2;
        }
        if (n == cap) {
            return -1;
        }
        out[n++] = (unsigned char) byte;
    }
    return (long) n;
}

/* Each `separator`-delimited piece of text[0..len) as one option `number`. */
static void put_pieces(struct builder *b, unsigned number, const char *text, size_t len,
                       char separator)
{
    size_t start = 0;
    while (b->error == NULL) {
        const char *end = memchr(text + start, separator, len - start);
        size_t piece = end != NULL ? (size_t) (end - (text + start)) : len - start;
        unsigned char value[MAX_OPTION_VALUE];
        long decoded = percent_decode(text + start, piece, value, sizeof value);
        if (decoded < 0) {
            b->error = "a path segment or query item is over 255 bytes or badly escaped";
            return;
        }
        put_option(b, number, value, (size_t) decoded);
        if (end == NULL) {
            return;
        }
        start += piece + 1;
    }
}

static void build_request(struct builder *b, unsigned code, int observe, uint16_t mid,
                          const unsigned char *token, const char *target,
                          const char *payload, size_t payload_len)
{
    memset(b, 0, sizeof *b);
    put_byte(b, 1u << 6 | COAP_CON << 4 | TOKEN_LEN);
    put_byte(b, code);
    put_byte(b, mid >> 8);
    put_byte(b, mid & 0xff);
    put_bytes(b, token, TOKEN_LEN);
    if (observe) {
        /* Observe 0 (register) is the empty uint. */
        put_option(b, OPTION_OBSERVE, NULL, 0);
    }

    if (target[0] == '/') {
        target++;
    }
    const char *query = strchr(target, '?');
    size_t path_len = query != NULL ? (size_t) (query - target) : strlen(target);
    if (path_len > 0) {
        put_pieces(b, OPTION_URI_PATH, target, path_len, '/');
    }
    if (query != NULL && query[1] != '\0') {
        put_pieces(b, OPTION_URI_QUERY, query + 1, strlen(query + 1), '&');
    }
    if (payload_len > 0) {
        put_byte(b, 0xff);
        put_bytes(b, payload, payload_len);
    }
}

/* Reads one extended option delta or length (RFC 7252 3.1); -1 when the nibble is the
 * reserved 15 or the extension runs past the message. */
static long option_value(unsigned nibble, const unsigned char *msg, size_t len, size_t *at)
{
    if (nibble < 13) {
        return nibble;
    }
    if (nibble == 13) {
        if (len - *at < 1) {
            return -1;
        }
        return 13 + msg[(*at)++];
    }
    if (nibble == 14) {
        if (len - *at < 2) {
            return -1;
        }
        long value = 269 + ((long) msg[*at] << 8 | msg[*at + 1]);
        *at += 2;
        return value;
    }
    return -1;
}

/* Parses a CoAP message, every length checked against `len`; -1 when malformed. */
static int parse_message(const unsigned char *msg, size_t len, struct coap_msg *out)
{
    memset(out, 0, sizeof *out);
    if (len < 4 || msg[0] >> 6 != 1) {
        return -1;
    }
    out->type = (msg[0] >> 4) & 3;
    out->token_len = msg[0] & 15;
    out->code = msg[1];
    out->mid = (uint16_t) (msg[2] << 8 | msg[3]);
    if (out->token_len > 8 || len - 4 < out->token_len) {
        return -1;
    }
    out->token = msg + 4;
    size_t at = 4 + out->token_len;
    while (at < len) {
        unsigned first = msg[at++];
        if (first == 0xff) {
            /* RFC 7252 3: a marker followed by nothing is a format error. */
            if (at == len) {
                return -1;
            }
            out->payload = msg + at;
            out->payload_len = len - at;
            return 0;
        }
        long delta = option_value(first >> 4, msg, len, &at);
        long value_len = option_value(first & 15, msg, len, &at);
        if (delta < 0 || value_len < 0 || (size_t) value_len > len - at) {
            return -1;
        }
        at += (size_t) value_len;
    }
    return 0;
}

static void print_coap(const char *what, unsigned code, const unsigned char *payload,
                       size_t payload_len)
{
    printf("%s %u.%02u", what, code >> 5, code & 31);
    if (payload_len > 0) {
        putchar(' ');
        for (size_t i = 0; i < payload_len; i++) {
            unsigned char byte = payload[i];
            if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
                putchar(byte);
            } else {
                printf("\\x%02x", byte);
            }
        }
    }
    putchar('\n');
    fflush(stdout);
}

/* --- the session -------------------------------------------------------------------- */

static void session_over(struct client *c, int ret)
{
    char text[200];
    mbedtls_strerror(ret, text, sizeof text);
    answer("closed %s (-0x%04x)", text, (unsigned) -ret);
    mbedtls_net_free(&c->net);
    exit(EXIT_SESSION);
}

static void send_datagram(struct client *c, const unsigned char *msg, size_t len)
{
    int ret;
    do {
        ret = mbedtls_ssl_write(&c->ssl, msg, len);
    } while (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (ret < 0) {
        session_over(c, ret);
    }
    if ((size_t) ret != len) {
        /* Datagram transport writes a message whole or not at all. */
        answer("closed a %zu-byte message was cut to %d bytes", len, ret);
        exit(EXIT_SESSION);
    }
}

static void send_empty(struct client *c, unsigned type, uint16_t mid)
{
    unsigned char msg[4] = { 1u << 6 | type << 4, 0, mid >> 8, mid & 0xff };
    send_datagram(c, msg, sizeof msg);
}

/*
 * Waits up to `wait_ms` for one record and parses it as CoAP into `in` (its token and
 * payload point into c->record); 0 when nothing usable came in time. A malformed
 * confirmable message is reset, anything else malformed ignored (RFC 7252 4.2, 4.3).
 */
static int receive(struct client *c, uint64_t wait_ms, struct coap_msg *in)
{
    mbedtls_ssl_conf_read_timeout(&c->conf, wait_ms == 0 ? 1 : (uint32_t) wait_ms);
    int ret = mbedtls_ssl_read(&c->ssl, c->record, sizeof c->record);
    if (ret == MBEDTLS_ERR_SSL_TIMEOUT || ret == MBEDTLS_ERR_SSL_WANT_READ ||
        ret == MBEDTLS_ERR_SSL_WANT_WRITE || ret == 0) {
        return 0;
    }
    if (ret < 0) {
        session_over(c, ret);
    }
    size_t n = (size_t) ret;
    if (parse_message(c->record, n, in) != 0) {
        if (n >= 4 && (c->record[0] >> 4 & 3) == COAP_CON) {
            send_empty(c, COAP_RST, (uint16_t) (c->record[2] << 8 | c->record[3]));
        }
        return 0;
    }
    return 1;
}

static int is_response(const struct coap_msg *m)
{
    return m->code >= 0x40 && m->code < 0xc0;
}

/*
 * A confirmable or non-confirmable message of the server's that answers nothing we are
 * waiting for: a notification of the observation is kept and acknowledged, the repeat of
 * a confirmable message we acknowledged is acknowledged again, any other confirmable
 * message reset (RFC 7252 4.2) and any other non-confirmable one ignored.
 */
static void take_unsolicited(struct client *c, const struct coap_msg *in)
{
    if (in->type != COAP_CON && in->type != COAP_NON) {
        return;
    }
    if (in->type == COAP_CON && c->have_last_con && c->last_con_mid == in->mid) {
        send_empty(c, COAP_ACK, in->mid);
        return;
    }
    int notification = c->observing && is_response(in) && in->token_len == TOKEN_LEN &&
                       memcmp(in->token, c->observe_token, TOKEN_LEN) == 0;
    if (!notification) {
        if (in->type == COAP_CON) {
            send_empty(c, COAP_RST, in->mid);
        }
        return;
    }
    if (in->type == COAP_CON) {
        send_empty(c, COAP_ACK, in->mid);
        c->have_last_con = 1;
        c->last_con_mid = in->mid;
    }
    if (c->kept_count == MAX_KEPT_NOTIFICATIONS) {
        c->kept_first = (c->kept_first + 1) % MAX_KEPT_NOTIFICATIONS;
        c->kept_count--;
    }
    struct notification *slot =
        &c->kept[(c->kept_first + c->kept_count) % MAX_KEPT_NOTIFICATIONS];
    c->kept_count++;
    slot->code = in->code;
    slot->payload_len = in->payload_len < MAX_KEPT_PAYLOAD ? in->payload_len : MAX_KEPT_PAYLOAD;
    if (slot->payload_len > 0) {
        memcpy(slot->payload, in->payload, slot->payload_len);
    }
}

enum outcome { ANSWERED, RESET, TIMED_OUT };

static uint64_t random_between(struct client *c, uint64_t low, uint64_t high)
{
    uint32_t draw = 0;
    if (mbedtls_ctr_drbg_random(&c->drbg, (unsigned char *) &draw, sizeof draw) != 0) {
        return low;
    }
    return low + draw % (high - low + 1);
}

/*
 * One confirmable exchange (RFC 7252 4.2, 5.2): the message is sent again after a random
 * initial timeout between ACK_TIMEOUT and ACK_TIMEOUT * 1.5, doubled each time, up to
 * MAX_RETRANSMIT times. An empty ACK stops the retransmissions and the response is then
 * awaited as a separate message, matched by token, until MAX_TRANSMIT_WAIT has passed.
 * `answered` gets the response (its token and payload point into c->record).
 */
static enum outcome exchange(struct client *c, const struct settings *s,
                             const unsigned char *msg, size_t len, uint16_t mid,
                             const unsigned char *token, size_t token_len,
                             struct coap_msg *answered)
{
    uint64_t start = now_ms();
    uint64_t timeout =
        random_between(c, s->ack_timeout_ms, s->ack_timeout_ms + s->ack_timeout_ms / 2);
    uint64_t max_transmit_wait =
        (uint64_t) s->ack_timeout_ms * ((2ull << s->max_retransmit) - 1) * 3 / 2;
    uint64_t next_send = start + timeout;
    unsigned retransmissions = 0;
    int acknowledged = 0;

    send_datagram(c, msg, len);
    for (;;) {
        uint64_t now = now_ms();
        uint64_t deadline = acknowledged ? start + max_transmit_wait : next_send;
        if (now >= deadline) {
            if (acknowledged || retransmissions == s->max_retransmit) {
                return TIMED_OUT;
            }
            retransmissions++;
            timeout *= 2;
            next_send = now + timeout;
            send_datagram(c, msg, len);
            continue;
        }
        struct coap_msg in;
        if (!receive(c, deadline - now, &in)) {
            continue;
        }
        int ours = in.token_len == token_len &&
                   (token_len == 0 || memcmp(in.token, token, token_len) == 0);
        if (in.type == COAP_ACK || in.type == COAP_RST) {
            if (in.mid != mid) {
                continue;
            }
            if (in.type == COAP_RST) {
                return RESET;
            }
            if (in.code == 0) {
                /* The empty ACK announcing a separate response. */
                acknowledged = 1;
            } else if (ours) {
                *answered = in;
                return ANSWERED;
            }
            continue;
        }
        if (token_len > 0 && ours && is_response(&in)) {
            /* The separate response, perhaps ahead of its empty ACK (RFC 7252 5.2.2). */
            if (in.type == COAP_CON) {
                send_empty(c, COAP_ACK, in.mid);
                c->have_last_con = 1;
                c->last_con_mid = in.mid;
            }
            *answered = in;
            return ANSWERED;
        }
        take_unsolicited(c, &in);
    }
}

static void request(struct client *c, const struct settings *s, unsigned code, int observe,
                    const char *target, const char *payload)
{
    unsigned char token[TOKEN_LEN];
    if (mbedtls_ctr_drbg_random(&c->drbg, token, sizeof token) != 0) {
        answer("error no random token");
        return;
    }
    uint16_t mid = c->next_mid++;
    static struct builder b;
    build_request(&b, code, observe, mid, token, target, payload,
                  payload != NULL ? strlen(payload) : 0);
    if (b.error != NULL) {
        answer("error %s", b.error);
        return;
    }
    if (observe) {
        /* Notifications of an earlier observation are no longer the ones asked for. */
        c->observing = 1;
        memcpy(c->observe_token, token, TOKEN_LEN);
        c->kept_count = 0;
    }
    struct coap_msg response;
    switch (exchange(c, s, b.buf, b.len, mid, token, sizeof token, &response)) {
    case ANSWERED:
        print_coap("response", response.code, response.payload, response.payload_len);
        break;
    case RESET:
        answer("reset");
        break;
    case TIMED_OUT:
        answer("timeout");
        break;
    }
}

static void ping(struct client *c, const struct settings *s)
{
    uint16_t mid = c->next_mid++;
    unsigned char msg[4] = { 1u << 6 | COAP_CON << 4, 0, mid >> 8, mid & 0xff };
    struct coap_msg unused;
    /* RFC 7252 4.3: an empty confirmable message is answered with a reset. */
    switch (exchange(c, s, msg, sizeof msg, mid, NULL, 0, &unused)) {
    case RESET:
        answer("pong");
        break;
    case ANSWERED:
    case TIMED_OUT:
        answer("timeout");
        break;
    }
}

static void print_kept(struct client *c)
{
    struct notification *n = &c->kept[c->kept_first];
    c->kept_first = (c->kept_first + 1) % MAX_KEPT_NOTIFICATIONS;
    c->kept_count--;
    print_coap("notification", n->code, n->payload, n->payload_len);
}

static void recv_notification(struct client *c, uint64_t wait_ms)
{
    uint64_t deadline = now_ms() + wait_ms;
    while (c->kept_count == 0) {
        uint64_t now = now_ms();
        if (now >= deadline) {
            answer("timeout");
            return;
        }
        struct coap_msg in;
        if (receive(c, deadline - now, &in)) {
            take_unsolicited(c, &in);
        }
    }
    print_kept(c);
}

static void close_session(struct client *c)
{
    int ret;
    do {
        ret = mbedtls_ssl_close_notify(&c->ssl);
    } while (ret == MBEDTLS_ERR_SSL_WANT_WRITE);
    mbedtls_net_free(&c->net);
    mbedtls_ssl_free(&c->ssl);
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    mbedtls_psa_crypto_free();
}

/* Splits off the next space-delimited word of *rest; NULL when there is none. */
static char *next_word(char **rest)
{
    char *word = *rest;
    while (*word == ' ') {
        word++;
    }
    if (*word == '\0') {
        return NULL;
    }
    char *end = strchr(word, ' ');
    if (end != NULL) {
        *end = '\0';
        *rest = end + 1;
    } else {
        *rest = word + strlen(word);
    }
    return word;
}

static void serve_commands(struct client *c, const struct settings *s)
{
    static char line[MAX_LINE];
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        } else if (!feof(stdin)) {
            int ch;
            while ((ch = getchar()) != EOF && ch != '\n') {
            }
            answer("error line over %d bytes", MAX_LINE - 2);
            continue;
        }
        if (len > 0 && line[len - 1] == '\r') {
            line[--len] = '\0';
        }
        char *rest = line;
        char *command = next_word(&rest);
        if (command == NULL) {
            answer("error empty command");
        } else if (strcmp(command, "quit") == 0) {
            return;
        } else if (strcmp(command, "ping") == 0) {
            ping(c, s);
        } else if (strcmp(command, "recv") == 0) {
            char *wait = next_word(&rest);
            char *end = NULL;
            unsigned long wait_ms = wait != NULL ? strtoul(wait, &end, 10) : 0;
            if (wait == NULL || *end != '\0' || wait[0] == '-' || wait_ms > 600000) {
                answer("error recv needs a wait in milliseconds, up to 600000");
            } else {
                recv_notification(c, wait_ms);
            }
        } else if (strcmp(command, "get") == 0 || strcmp(command, "post") == 0 ||
                   strcmp(command, "observe") == 0) {
            int post = strcmp(command, "post") == 0;
            int observe = strcmp(command, "observe") == 0;
            char *target = next_word(&rest);
            if (target == NULL) {
                answer("error %s needs a path", command);
            } else {
                request(c, s, post ? COAP_POST : COAP_GET, observe, target,
                        post ? rest : NULL);
            }
        } else {
            answer("error unknown command %s", command);
        }
    }
}

int main(int argc, char **argv)
{
    static struct settings s;
    static struct client c;
    parse_args(argc, argv, &s);
    setup(&c, &s);
    handshake(&c, &s);
    serve_commands(&c, &s);
    close_session(&c);
    return 0;
}
