/*
 * Trimming a gzip checkpoint's window to the bytes its stream refers back to.
 *
 * A checkpoint's window is the 32 KiB of output before it: the dictionary
 * deflate's back-references copy from when inflation restarts there. Only
 * output within 32 KiB of the checkpoint can reach into it, and on a real
 * layer (Debian bookworm + python3) those references copy about 10 % of its
 * bytes. The rest can be anything, so they are stored as zeros: the window
 * then deflates to about a tenth, and a mount reading a registry's index
 * fetches that much less before each span it decodes.
 *
 * Which window bytes are copied is found without a deflate decoder of our
 * own: what inflation does (its codes, lengths and distances) depends on the
 * compressed bits alone, never on the window's contents. So the output is
 * inflated three more times with probe windows in place of the real one:
 * byte k holding the low byte of k, then its complement, then the high byte
 * of k. An output byte that comes out the same under the first two is a
 * literal; any other was copied from window byte (low | high << 8). The
 * trimmed window is checked by inflating with it: unless its output is
 * exactly the real window's, the whole window is kept.
 *
 *   gzipTrimWindowAsync(compressedOffset, bits, window, compressed, length)
 *       -> Promise<Buffer>: a new buffer of window.length bytes; `compressed`
 *       starts where gzipInflateFrom's does and holds at least `length`
 *       (at most 32 KiB) bytes of output. Runs on libuv's thread pool.
 */
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include "gzip_extract.h"

#define WINSIZE 32768U

typedef struct {
  extract_t x;           /* x.window: the real window; x.length: output bytes to look at */
  unsigned char *trimmed; /* window_len bytes: a JS Buffer's memory */
  napi_async_work work;
  napi_deferred deferred;
  napi_ref window_ref;
  napi_ref input_ref;
  napi_ref output_ref;
} trim_t;

/* Inflates x's output with `window` in place of its own into `out`; 0 on failure. */
static int inflate_with(extract_t *x, const unsigned char *window, unsigned char *out) {
  extract_t probe = *x;
  probe.window = window;
  probe.out = out;
  extract_run(&probe);
  return probe.error_code == NULL;
}

static void trim_run(trim_t *t) {
  extract_t *x = &t->x;
  size_t n = x->length, w = x->window_len;
  memcpy(t->trimmed, x->window, w);  /* the whole window, unless trimming succeeds */
  if (w == 0 || n == 0) return;
  unsigned char *real = malloc(4 * n + w);
  unsigned char *lo = real + n, *notlo = lo + n, *hi = notlo + n, *probe = hi + n;
  unsigned char *used = calloc(w, 1);
  if (!real || !used) goto out;
  if (!inflate_with(x, x->window, real)) goto out;
  for (size_t k = 0; k < w; k++) probe[k] = (unsigned char)k;
  if (!inflate_with(x, probe, lo)) goto out;
  for (size_t k = 0; k < w; k++) probe[k] = (unsigned char)~k;
  if (!inflate_with(x, probe, notlo)) goto out;
  for (size_t k = 0; k < w; k++) probe[k] = (unsigned char)(k >> 8);
  if (!inflate_with(x, probe, hi)) goto out;
  for (size_t p = 0; p < n; p++) {
    if (lo[p] == notlo[p]) continue;  /* a literal */
    size_t k = (size_t)lo[p] | ((size_t)hi[p] << 8);
    if (k < w) used[k] = 1;
  }
  for (size_t k = 0; k < w; k++) probe[k] = used[k] ? x->window[k] : 0;
  /* The check: the trimmed window must give exactly the real output. */
  if (!inflate_with(x, probe, lo) || memcmp(lo, real, n) != 0) goto out;
  memcpy(t->trimmed, probe, w);
out:
  free(real);
  free(used);
}

static void trim_execute(napi_env env, void *data) {
  (void)env;
  trim_run(data);
}

static void trim_complete(napi_env env, napi_status status, void *data) {
  trim_t *t = data;
  napi_value value, err, code, message;
  if (status == napi_ok && napi_get_reference_value(env, t->output_ref, &value) == napi_ok) {
    napi_resolve_deferred(env, t->deferred, value);
  } else {
    napi_create_string_utf8(env, "ECANCELED", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, "gzipTrimWindowAsync: cancelled", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, code, message, &err);
    napi_reject_deferred(env, t->deferred, err);
  }
  napi_delete_reference(env, t->window_ref);
  napi_delete_reference(env, t->input_ref);
  napi_delete_reference(env, t->output_ref);
  napi_delete_async_work(env, t->work);
  free(t);
}

static napi_value js_trim_window_async(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], promise, name, output;
  double length;
  void *p;
  trim_t *t = calloc(1, sizeof *t);
  if (!t) {
    napi_throw_error(env, "ENOMEM", "gzipTrimWindowAsync: out of memory");
    return NULL;
  }
  extract_t *x = &t->x;
  void *window = NULL, *in = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 ||
      napi_get_value_double(env, argv[0], &x->compressed_offset) != napi_ok ||
      napi_get_value_int32(env, argv[1], &x->bits) != napi_ok ||
      napi_get_buffer_info(env, argv[2], &window, &x->window_len) != napi_ok || x->window_len > WINSIZE ||
      napi_get_buffer_info(env, argv[3], &in, &x->in_len) != napi_ok ||
      napi_get_value_double(env, argv[4], &length) != napi_ok || !(length >= 0) || length > WINSIZE) {
    free(t);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "gzipTrimWindowAsync(compressedOffset, bits, window, compressed, length): bad arguments");
    return NULL;
  }
  x->window = window;
  x->in = in;
  x->length = (size_t)length;
  if (napi_create_buffer(env, x->window_len, &p, &output) != napi_ok) goto fail;
  t->trimmed = p;
  if (napi_create_promise(env, &t->deferred, &promise) != napi_ok) goto fail;
  /* The buffers must outlive the work: hold them until it completes. */
  if (napi_create_reference(env, argv[2], 1, &t->window_ref) != napi_ok) goto fail;
  if (napi_create_reference(env, argv[3], 1, &t->input_ref) != napi_ok) goto fail;
  if (napi_create_reference(env, output, 1, &t->output_ref) != napi_ok) goto fail;
  napi_create_string_utf8(env, "lazyroot:gzipTrimWindow", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, trim_execute, trim_complete, t, &t->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, t->work) != napi_ok) goto fail;
  return promise;
fail:
  napi_throw_error(env, "EINVAL", "gzipTrimWindowAsync: could not start");
  return NULL; /* t leaks here only if N-API itself is failing */
}

void register_gzip_window(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    {"gzipTrimWindowAsync", NULL, js_trim_window_async, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 1, fns);
}
