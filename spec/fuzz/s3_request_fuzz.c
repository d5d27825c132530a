/*
 * libFuzzer harness: how src/s3.c turns an object key (arbitrary bytes) into a request.
 * req_start() builds the path, signs it (sigv4.c) and configures a curl handle; nothing is
 * sent. Property: the URL's path is "/bucket/" + the key, percent-encoded as SigV4 wants
 * for S3 (A-Za-z0-9-._~ and '/' kept, everything else %XX), and decoding it gives back the
 * exact key, NUL bytes included. A URL that names another key would make the client act on
 * another object (DELETE "a\0b" deleting "a").
 *
 * s3.c keeps req_start static, so this file includes s3.c.
 */
#include "../../src/s3.c"

static s3_client client;
static CURL *easy;

static void setup(void) {
    memset(&client, 0, sizeof client);
    client.path_style = 1;
    client.verify_tls = 1;
    client.max_attempts = 1;
    client.connect_timeout_ms = client.timeout_ms = 1000;
    client.authority = strdup("127.0.0.1:9000");
    client.region = strdup("us-east-1");
    client.access_key = strdup("AKIDEXAMPLE");
    client.secret_key = strdup("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    client.bucket = strdup("bucket");
    client.multi = curl_multi_init();
    easy = curl_easy_init();
    if (client.multi == NULL || easy == NULL || client.bucket == NULL) abort();
}

static int hexv(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int kept(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '/';
}

static void check(const char *url, const char *prefix, const uint8_t *key, size_t len) {
    size_t pl = strlen(prefix);
    if (strncmp(url, prefix, pl) != 0) {
        fprintf(stderr, "URL %s does not start with %s\n", url, prefix);
        abort();
    }
    const char *p = url + pl;
    size_t i = 0;
    for (; *p != '\0' && *p != '?'; i++) {
        int c;
        if (*p == '%') {
            if (hexv(p[1]) < 0 || hexv(p[2]) < 0) abort();
            c = hexv(p[1]) * 16 + hexv(p[2]);
            if (kept((unsigned char)c)) {
                fprintf(stderr, "byte %02x encoded though SigV4 keeps it\n", c);
                abort();
            }
            p += 3;
        } else {
            c = (unsigned char)*p;
            if (!kept((unsigned char)c)) {
                fprintf(stderr, "byte %02x sent raw in %s\n", c, url);
                abort();
            }
            p++;
        }
        if (i >= len || key[i] != c) {
            fprintf(stderr, "URL %s names another key (differs at byte %zu of %zu)\n", url, i, len);
            abort();
        }
    }
    if (i != len) {
        fprintf(stderr, "URL %s names a key of %zu bytes, not %zu\n", url, i, len);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready = 0;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size == 0) return 0; /* s3.c refuses empty keys before req_start */
    char errbuf[CURL_ERROR_SIZE];
    for (int style = 1; style >= 0; style--) {
        s3_req r;
        memset(&r, 0, sizeof r);
        r.method = "HEAD";
        r.nobody = 1;
        r.idempotent = 1;
        r.key = (const char *)data;
        r.keylen = size;
        memcpy(r.payload_hash, EMPTY_SHA256, sizeof EMPTY_SHA256);
        client.path_style = style;
        int st = req_start(NULL, &client, &r, easy, errbuf, 0);
        if (st == START_OK) {
            check(r.url, style ? "http://127.0.0.1:9000/bucket/" : "http://bucket.127.0.0.1:9000/", data, size);
            curl_multi_remove_handle(client.multi, easy);
        } else if (st != START_NOMEM) {
            fprintf(stderr, "req_start failed: %d\n", st);
            abort();
        }
        req_reset_attempt(&r);
    }
    return 0;
}
