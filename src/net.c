/*
 * resclean_net.so: the primitives that need the network libraries (resclean.pg on libpq,
 * resclean.s3 and resclean.sigv4 on libcurl, OpenSSL and expat). The host loads this
 * library the first time a script requires one of them, so a script that needs none of
 * them (and `resclean help`) starts without loading and initialising some thirty shared
 * libraries: about 3 ms instead of 20 to 30. These are its entry points besides the
 * luaopen_ functions.
 */
#include <stdio.h>

#include <curl/curl.h>
#include <expat.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "resclean.h"

/* Once, right after loading: 0, or -1 when libcurl cannot be initialised. */
int resclean_net_init(void) {
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

/* At exit, after the Lua state is closed (no client is left). */
void resclean_net_cleanup(void) {
    curl_global_cleanup();
}

/* `resclean version`: one line for each library. */
void resclean_net_versions(FILE *out) {
    const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    int pq = PQlibVersion();
    fprintf(out, "libpq %d.%d\n", pq / 10000, pq % 10000);
    fprintf(out, "libcurl %s\n", cv->version);
    fprintf(out, "%s\n", OpenSSL_version(OPENSSL_VERSION));
    fprintf(out, "%s\n", XML_ExpatVersion());
}
