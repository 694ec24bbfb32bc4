// Typed wrappers for libcurl's variadic functions, which Swift cannot call directly.
// One wrapper per argument type; each is a plain forwarding call.
#ifndef MAYFLY_CCURL_SHIM_H
#define MAYFLY_CCURL_SHIM_H

#include <curl/curl.h>

typedef size_t (*mayfly_curl_data_callback)(char *buffer, size_t size, size_t count, void *userdata);
typedef int (*mayfly_curl_xferinfo_callback)(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
                                              curl_off_t ultotal, curl_off_t ulnow);

static inline CURLcode mayfly_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mayfly_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mayfly_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mayfly_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mayfly_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mayfly_easy_setopt_data_callback(CURL *handle, CURLoption option,
                                                        mayfly_curl_data_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode mayfly_easy_setopt_xferinfo_callback(CURL *handle, mayfly_curl_xferinfo_callback value) {
    return curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, value);
}

static inline CURLcode mayfly_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode mayfly_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode mayfly_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode mayfly_easy_getinfo_string(CURL *handle, CURLINFO info, char **value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLMcode mayfly_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}

/// CURLMsg.data is an anonymous union; expose its result member by name.
static inline CURLcode mayfly_msg_result(CURLMsg *message) {
    return message->data.result;
}

/// The protocol bit masks used for CURLOPT_PROTOCOLS / CURLOPT_REDIR_PROTOCOLS.
static inline long mayfly_proto_http_https(void) {
    return (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS);
}

#endif
