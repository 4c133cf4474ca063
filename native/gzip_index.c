/*
 * Random access into ordinary gzip layers (the zran technique of zlib's
 * examples/zran.c, written for lazyroot's streaming use):
 *
 *   GzipIndexer  inflates a gzip blob pushed to it chunk by chunk, hands back
 *                the uncompressed bytes, and records checkpoints at deflate
 *                block boundaries roughly every `spanBytes` of compressed
 *                input: the compressed offset, the bits of the previous byte
 *                that belong to the next block, the uncompressed offset, and
 *                the 32 KiB window inflation needs to restart there.
 *   gzipInflateFrom / gzipInflateFromAsync
 *                restart inflation at a checkpoint and return `length`
 *                uncompressed bytes after skipping `skip`.
 *
 * zlib is not linked here: Node's own binary exports it (inflate, inflatePrime,
 * inflateSetDictionary, inflateGetDictionary…) and ships zlib.h, so the addon's
 * undefined symbols resolve against the running node at load time.
 *
 * Checkpoint conventions (src/index/types.ts GzipCheckpoint):
 *   - `compressedOffset` is the first byte inflation reads whole; when `bits`
 *     is not 0, the high `bits` bits of the byte before it start the block.
 *   - A checkpoint with bits 0 and an empty window is the start of a gzip
 *     member: its bytes begin with the gzip header, inflated in gzip mode.
 *     Every other checkpoint is inside a member, after at least one output
 *     byte, so its window is never empty, and is inflated raw (windowBits -15).
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include <zlib.h>
#include "gzip_extract.h"

#define WINSIZE 32768U
#define OUT_CHUNK (1U << 20)  /* output buffers handed to JS are at most this big */
#define MODE_RAW (-15)
#define MODE_GZIP 31          /* 15 + 16: gzip header and trailer only */

#define NAPI_OK(call)                                                   \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      napi_throw_error(env, "EINVAL", "gzip_index: bad arguments");     \
      goto fail;                                                        \
    }                                                                   \
  } while (0)

/* Throws an Error with `code` and a numeric `compressedOffset` (when >= 0). */
static void throw_gzip(napi_env env, const char *code, double offset, const char *fmt, const char *detail) {
  char message[512];
  snprintf(message, sizeof message, fmt, detail ? detail : "", (long long)offset);
  napi_value c, m, err, off;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &err);
  if (offset >= 0) {
    napi_create_double(env, offset, &off);
    napi_set_named_property(env, err, "compressedOffset", off);
  }
  napi_throw(env, err);
}

/* ------------------------------------------------------------------------ */
/* GzipIndexer                                                              */

typedef struct {
  z_stream strm;
  unsigned char *scratch;  /* OUT_CHUNK bytes zlib inflates into; copied out to JS Buffers */
  int initialized;
  int started;         /* a first byte was seen (checkpoint 0 recorded) */
  int member_ended;    /* the last member's trailer was read; more input starts a new member */
  int failed;
  double span;         /* compressed bytes between checkpoints */
  double max_out;      /* uncompressed bytes between checkpoints, at most (roughly) */
  double totin;        /* compressed bytes consumed */
  double totout;       /* uncompressed bytes produced */
  double member_out;   /* uncompressed bytes produced by the current member */
  double last_in;      /* compressedOffset of the last checkpoint */
  double last_out;     /* uncompressedOffset of the last checkpoint */
} indexer_t;

static void indexer_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  indexer_t *ix = data;
  if (ix->initialized) inflateEnd(&ix->strm);
  free(ix->scratch);
  free(ix);
}

static napi_value indexer_new(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], self;
  double span = 4 * 1024 * 1024, max_out = 0;
  indexer_t *ix = NULL;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  napi_valuetype t;
  if (argc >= 1 && napi_typeof(env, argv[0], &t) == napi_ok && t == napi_number) NAPI_OK(napi_get_value_double(env, argv[0], &span));
  if (argc >= 2 && napi_typeof(env, argv[1], &t) == napi_ok && t == napi_number) NAPI_OK(napi_get_value_double(env, argv[1], &max_out));
  if (!(span >= 1)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "GzipIndexer: spanBytes must be at least 1");
    return NULL;
  }
  if (!(max_out > 0)) max_out = span * 4;
  ix = calloc(1, sizeof *ix);
  if (!ix) {
    napi_throw_error(env, "ENOMEM", "GzipIndexer: out of memory");
    return NULL;
  }
  ix->span = span;
  ix->max_out = max_out;
  ix->scratch = malloc(OUT_CHUNK);
  if (!ix->scratch || inflateInit2(&ix->strm, MODE_GZIP) != Z_OK) {
    free(ix->scratch);
    free(ix);
    napi_throw_error(env, "ENOMEM", "GzipIndexer: inflateInit2 failed");
    return NULL;
  }
  ix->initialized = 1;
  if (napi_wrap(env, self, ix, indexer_finalize, NULL, NULL) != napi_ok) {
    indexer_finalize(env, ix, NULL);
    napi_throw_error(env, "EINVAL", "GzipIndexer: wrap failed");
    return NULL;
  }
  return self;
fail:
  return NULL;
}

/* Appends { compressedOffset, bits, uncompressedOffset, window } to `list`. */
static int add_checkpoint(napi_env env, indexer_t *ix, napi_value list, uint32_t *count, double in, int bits, int with_window) {
  napi_value cp, v, window;
  if (napi_create_object(env, &cp) != napi_ok) return 0;
  napi_create_double(env, in, &v);
  napi_set_named_property(env, cp, "compressedOffset", v);
  napi_create_int32(env, bits, &v);
  napi_set_named_property(env, cp, "bits", v);
  napi_create_double(env, ix->totout, &v);
  napi_set_named_property(env, cp, "uncompressedOffset", v);
  uInt have = 0;
  if (with_window && inflateGetDictionary(&ix->strm, NULL, &have) != Z_OK) return 0;
  void *data;
  if (napi_create_buffer(env, have, &data, &window) != napi_ok) return 0;
  if (have && inflateGetDictionary(&ix->strm, data, &have) != Z_OK) return 0;
  napi_set_named_property(env, cp, "window", window);
  if (napi_set_element(env, list, (*count)++, cp) != napi_ok) return 0;
  ix->last_in = in;
  ix->last_out = ix->totout;
  return 1;
}

/*
 * Copies the filled part of the scratch buffer into a new JS Buffer appended
 * to `outs`. Copying (about 3% of the time) keeps every output byte in
 * memory V8 accounts for, so the GC sees it; external buffers would not be.
 */
static int flush_out(napi_env env, const unsigned char *data, size_t used, napi_value outs, uint32_t *count) {
  if (used == 0) return 1;
  napi_value buf;
  if (napi_create_buffer_copy(env, used, data, NULL, &buf) != napi_ok) return 0;
  return napi_set_element(env, outs, (*count)++, buf) == napi_ok;
}

/* push(chunk: Buffer) -> { out: Buffer[], checkpoints: Checkpoint[] } */
static napi_value indexer_push(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], self, result, outs, cps;
  indexer_t *ix;
  unsigned char *input, *out;
  size_t input_len;
  uint32_t nouts = 0, ncps = 0;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  NAPI_OK(napi_unwrap(env, self, (void **)&ix));
  if (argc < 1) NAPI_OK(napi_invalid_arg);
  NAPI_OK(napi_get_buffer_info(env, argv[0], (void **)&input, &input_len));
  if (ix->failed) {
    throw_gzip(env, "ERR_INVALID_STATE", -1, "GzipIndexer: used after an error%s", NULL);
    return NULL;
  }
  NAPI_OK(napi_create_array(env, &outs));
  NAPI_OK(napi_create_array(env, &cps));

  z_stream *s = &ix->strm;
  out = ix->scratch;
  const unsigned char *rest = input;  /* input not yet given to zlib */
  size_t rest_len = input_len;
  size_t used = 0;                     /* bytes of `out` filled */
  for (;;) {
    if (rest_len == 0 && (ix->member_ended || !ix->started)) break;
    double pos = ix->totin;  /* offset of `rest` in the blob */
    if (!ix->started || ix->member_ended) {
      /* A gzip member starts here. The first always gets a checkpoint; later
       * ones when a span has gone by (inflateFrom crosses member ends). */
      if (ix->member_ended) inflateReset(s);
      if (!ix->started || pos - ix->last_in >= ix->span || ix->totout - ix->last_out >= ix->max_out) {
        if (!add_checkpoint(env, ix, cps, &ncps, pos, 0, 0)) goto nomem;
      }
      ix->started = 1;
      ix->member_ended = 0;
      ix->member_out = 0;
    }
    /* Near a checkpoint, stop at every block boundary (Z_BLOCK). Otherwise
     * inflate freely, but give zlib no more input or output room than what
     * is left before a checkpoint is due, so the switch happens on time. */
    double in_left = ix->span - (pos - ix->last_in);
    double out_left = ix->max_out - (ix->totout - ix->last_out);
    int want = in_left <= 0 || out_left <= 0;
    size_t in_allow = rest_len, out_allow = OUT_CHUNK - used;
    if (!want) {
      if ((double)in_allow > in_left) in_allow = (size_t)in_left;
      if ((double)out_allow > out_left) out_allow = (size_t)out_left;
    }
    if (in_allow > UINT_MAX) in_allow = UINT_MAX;
    s->next_in = (unsigned char *)rest;
    s->avail_in = (uInt)in_allow;
    s->next_out = out + used;
    s->avail_out = (uInt)out_allow;
    int ret = inflate(s, want ? Z_BLOCK : Z_NO_FLUSH);
    size_t consumed = in_allow - s->avail_in, produced = out_allow - s->avail_out;
    rest += consumed;
    rest_len -= consumed;
    used += produced;
    ix->totin += (double)consumed;
    ix->totout += (double)produced;
    ix->member_out += (double)produced;
    if (ret == Z_STREAM_END) {
      ix->member_ended = 1;
    } else if (ret == Z_BUF_ERROR) {
      /* No progress: fine when the input is used up; with input and room left, zlib is stuck. */
      if (s->avail_in != 0 && s->avail_out != 0) goto corrupt;
    } else if (ret != Z_OK) {
      goto corrupt;
    } else if (want && (s->data_type & 0xc0) == 0x80 && ix->member_out > 0) {
      /* At the end of a deflate block that is not the last (bit 64 clear):
       * the next block starts `data_type & 7` bits before next_in. The end of
       * the gzip header also reports 0x80; it is skipped (member_out == 0) as
       * the member's start is a checkpoint already. */
      if (!add_checkpoint(env, ix, cps, &ncps, ix->totin, s->data_type & 7, 1)) goto nomem;
    }
    if (used == OUT_CHUNK) {
      if (!flush_out(env, out, used, outs, &nouts)) goto nomem;
      used = 0;
      continue;
    }
    /* Done when all input is consumed and zlib can do no more without more. */
    if (rest_len == 0 && (ret == Z_BUF_ERROR || (consumed == 0 && produced == 0))) break;
  }
  if (!flush_out(env, out, used, outs, &nouts)) goto nomem;
  NAPI_OK(napi_create_object(env, &result));
  NAPI_OK(napi_set_named_property(env, result, "out", outs));
  NAPI_OK(napi_set_named_property(env, result, "checkpoints", cps));
  return result;

corrupt:
  ix->failed = 1;
  {
    const char *msg = s->msg ? s->msg : "invalid data";
    throw_gzip(env, "Z_DATA_ERROR", ix->totin, "corrupt gzip data (%s) at compressed offset %lld", msg);
  }
  return NULL;
nomem:
  ix->failed = 1;
  napi_throw_error(env, "ENOMEM", "GzipIndexer: out of memory");
  return NULL;
fail:
  return NULL;
}

/* end() -> { compressedSize, uncompressedSize }; throws when the gzip data is incomplete. */
static napi_value indexer_end(napi_env env, napi_callback_info info) {
  napi_value self, result, v;
  indexer_t *ix;
  NAPI_OK(napi_get_cb_info(env, info, NULL, NULL, &self, NULL));
  NAPI_OK(napi_unwrap(env, self, (void **)&ix));
  if (ix->failed) {
    throw_gzip(env, "ERR_INVALID_STATE", -1, "GzipIndexer: used after an error%s", NULL);
    return NULL;
  }
  if (!ix->started) {
    throw_gzip(env, "Z_BUF_ERROR", 0, "gzip data is empty%s (compressed offset %lld)", "");
    return NULL;
  }
  if (!ix->member_ended) {
    throw_gzip(env, "Z_BUF_ERROR", ix->totin, "gzip data ends early%s: truncated at compressed offset %lld", "");
    return NULL;
  }
  NAPI_OK(napi_create_object(env, &result));
  napi_create_double(env, ix->totin, &v);
  napi_set_named_property(env, result, "compressedSize", v);
  napi_create_double(env, ix->totout, &v);
  napi_set_named_property(env, result, "uncompressedSize", v);
  return result;
fail:
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* inflate from a checkpoint                                                */

/* extract_t and extract_run: gzip_extract.h (gzip_window.c uses them too). */

/*
 * The work itself, with no N-API calls (it may run on a worker thread).
 * `in` starts at the byte holding `bits` when bits != 0, else at
 * compressedOffset. At the end of a member (raw mode: after the deflate
 * stream, so the 8-byte trailer is skipped by hand), a following member is
 * inflated in gzip mode, which skips its header.
 */
void extract_run(extract_t *x) {
  z_stream s;
  memset(&s, 0, sizeof s);
  const unsigned char *in = x->in;
  size_t in_len = x->in_len;
  int member_start = x->bits == 0 && x->window_len == 0;
  int mode = member_start ? MODE_GZIP : MODE_RAW;
  unsigned char *discard = NULL;
  /* Offset in the blob of in[0]: the byte holding `bits`, when there are any. */
  double base = x->compressed_offset - (x->bits ? 1 : 0);
  x->error_code = NULL;
  if (x->bits < 0 || x->bits > 7 || x->window_len > WINSIZE) {
    x->error_code = "ERR_INVALID_ARG_VALUE";
    snprintf(x->error, sizeof x->error, "gzip checkpoint at compressed offset %lld: bad bits or window", (long long)x->compressed_offset);
    x->error_offset = x->compressed_offset;
    return;
  }
  if (inflateInit2(&s, mode) != Z_OK) goto nomem;
  if (x->bits) {
    if (in_len < 1) goto truncated;
    if (inflatePrime(&s, x->bits, in[0] >> (8 - x->bits)) != Z_OK) goto corrupt;
    in++;
    in_len--;
  }
  if (!member_start && x->window_len && inflateSetDictionary(&s, x->window, (uInt)x->window_len) != Z_OK) goto corrupt;
  discard = malloc(WINSIZE);
  if (!discard) goto nomem;

  double skip = x->skip;
  size_t left = x->length;
  size_t consumed = 0;  /* of in, for error offsets */
  s.next_in = (unsigned char *)in;
  s.avail_in = 0;
  while (left > 0 || skip > 0) {
    if (s.avail_in == 0) {
      size_t rest = in_len - consumed;
      s.avail_in = rest > UINT_MAX ? UINT_MAX : (uInt)rest;
      s.next_in = (unsigned char *)in + consumed;
    }
    unsigned char *dest;
    uInt room;
    if (skip > 0) {
      dest = discard;
      room = skip < WINSIZE ? (uInt)skip : WINSIZE;
    } else {
      dest = x->out + (x->length - left);
      room = left > UINT_MAX ? UINT_MAX : (uInt)left;
    }
    s.next_out = dest;
    s.avail_out = room;
    uInt in_before = s.avail_in;
    int ret = inflate(&s, Z_NO_FLUSH);
    consumed += in_before - s.avail_in;
    uInt got = room - s.avail_out;
    if (skip > 0) skip -= got;
    else left -= got;
    if (ret == Z_STREAM_END) {
      if (left == 0 && skip <= 0) break;
      /* The member ended; the next one (if any) follows its trailer. */
      if (mode == MODE_RAW) {
        if (in_len - consumed < 8) goto truncated;
        consumed += 8;
      }
      if (consumed >= in_len) goto truncated;
      mode = MODE_GZIP;
      if (inflateReset2(&s, MODE_GZIP) != Z_OK) goto corrupt;
      s.avail_in = 0;
      continue;
    }
    if (ret == Z_BUF_ERROR || (ret == Z_OK && got == 0 && s.avail_in == 0)) {
      if (consumed >= in_len) goto truncated;
      continue;
    }
    if (ret != Z_OK) goto corrupt;
  }
  free(discard);
  inflateEnd(&s);
  return;

truncated:
  x->error_code = "Z_BUF_ERROR";
  x->error_offset = base + (double)x->in_len;
  snprintf(x->error, sizeof x->error, "gzip data from compressed offset %lld ends at %lld, before the %zu bytes asked for", (long long)x->compressed_offset, (long long)x->error_offset, x->length);
  goto out;
corrupt:
  x->error_code = "Z_DATA_ERROR";
  x->error_offset = base + (double)(s.next_in ? (size_t)(s.next_in - x->in) : 0);
  snprintf(x->error, sizeof x->error, "corrupt gzip data (%s) at compressed offset %lld", s.msg ? s.msg : "invalid data", (long long)x->error_offset);
  goto out;
nomem:
  x->error_code = "ENOMEM";
  snprintf(x->error, sizeof x->error, "gzip inflate: out of memory");
  x->error_offset = -1;
out:
  free(discard);
  inflateEnd(&s);
}

static napi_value extract_error(napi_env env, extract_t *x) {
  napi_value c, m, err, off;
  napi_create_string_utf8(env, x->error_code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, x->error, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &err);
  if (x->error_offset >= 0) {
    napi_create_double(env, x->error_offset, &off);
    napi_set_named_property(env, err, "compressedOffset", off);
  }
  return err;
}

/* Reads (compressedOffset, bits, window, compressed, skip, length) into x. */
static int extract_args(napi_env env, napi_callback_info info, extract_t *x, napi_value *argv) {
  size_t argc = 6;
  double length;
  void *p;
  memset(x, 0, sizeof *x);
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 6) return 0;
  if (napi_get_value_double(env, argv[0], &x->compressed_offset) != napi_ok) return 0;
  if (napi_get_value_int32(env, argv[1], &x->bits) != napi_ok) return 0;
  if (napi_get_buffer_info(env, argv[2], &p, &x->window_len) != napi_ok) return 0;
  x->window = p;
  if (napi_get_buffer_info(env, argv[3], &p, &x->in_len) != napi_ok) return 0;
  x->in = p;
  if (napi_get_value_double(env, argv[4], &x->skip) != napi_ok || !(x->skip >= 0)) return 0;
  if (napi_get_value_double(env, argv[5], &length) != napi_ok || !(length >= 0) || length > (double)SIZE_MAX / 2) return 0;
  x->length = (size_t)length;
  return 1;
}

/* gzipInflateFrom(compressedOffset, bits, window, compressed, skip, length) -> Buffer */
static napi_value js_inflate_from(napi_env env, napi_callback_info info) {
  napi_value argv[6], result;
  extract_t x;
  if (!extract_args(env, info, &x, argv)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "gzipInflateFrom(compressedOffset, bits, window, compressed, skip, length): bad arguments");
    return NULL;
  }
  void *data;
  if (napi_create_buffer(env, x.length, &data, &result) != napi_ok) {
    napi_throw_error(env, "ENOMEM", "gzipInflateFrom: out of memory");
    return NULL;
  }
  x.out = data;
  extract_run(&x);
  if (x.error_code) {
    napi_throw(env, extract_error(env, &x));
    return NULL;
  }
  return result;
}

typedef struct {
  extract_t x;
  napi_async_work work;
  napi_deferred deferred;
  napi_ref window_ref;
  napi_ref input_ref;
  napi_ref output_ref;
} async_extract_t;

static void async_execute(napi_env env, void *data) {
  (void)env;
  extract_run(&((async_extract_t *)data)->x);
}

static void async_complete(napi_env env, napi_status status, void *data) {
  async_extract_t *a = data;
  napi_value value;
  if (status != napi_ok && !a->x.error_code) {
    a->x.error_code = "ECANCELED";
    snprintf(a->x.error, sizeof a->x.error, "gzipInflateFromAsync: cancelled");
    a->x.error_offset = -1;
  }
  if (a->x.error_code) napi_reject_deferred(env, a->deferred, extract_error(env, &a->x));
  else if (napi_get_reference_value(env, a->output_ref, &value) == napi_ok) napi_resolve_deferred(env, a->deferred, value);
  napi_delete_reference(env, a->window_ref);
  napi_delete_reference(env, a->input_ref);
  napi_delete_reference(env, a->output_ref);
  napi_delete_async_work(env, a->work);
  free(a);
}

/* gzipInflateFromAsync(...same...) -> Promise<Buffer>: the inflation runs on libuv's thread pool. */
static napi_value js_inflate_from_async(napi_env env, napi_callback_info info) {
  napi_value argv[6], promise, name, output;
  void *out;
  async_extract_t *a = calloc(1, sizeof *a);
  if (!a) {
    napi_throw_error(env, "ENOMEM", "gzipInflateFromAsync: out of memory");
    return NULL;
  }
  if (!extract_args(env, info, &a->x, argv)) {
    free(a);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "gzipInflateFromAsync(compressedOffset, bits, window, compressed, skip, length): bad arguments");
    return NULL;
  }
  /* The output is a JS Buffer made here; the worker thread fills it. */
  if (napi_create_buffer(env, a->x.length, &out, &output) != napi_ok) goto fail;
  a->x.out = out;
  if (napi_create_promise(env, &a->deferred, &promise) != napi_ok) goto fail;
  /* The buffers must outlive the work: hold them until it completes. */
  if (napi_create_reference(env, argv[2], 1, &a->window_ref) != napi_ok) goto fail;
  if (napi_create_reference(env, argv[3], 1, &a->input_ref) != napi_ok) goto fail;
  if (napi_create_reference(env, output, 1, &a->output_ref) != napi_ok) goto fail;
  napi_create_string_utf8(env, "lazyroot:gzipInflateFrom", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, async_execute, async_complete, a, &a->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, a->work) != napi_ok) goto fail;
  return promise;
fail:
  napi_throw_error(env, "EINVAL", "gzipInflateFromAsync: could not start");
  return NULL;  /* a leaks here only if N-API itself is failing */
}

void register_gzip_index(napi_env env, napi_value exports) {
  napi_property_descriptor methods[] = {
    {"push", NULL, indexer_push, NULL, NULL, NULL, napi_default, NULL},
    {"end", NULL, indexer_end, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "GzipIndexer", NAPI_AUTO_LENGTH, indexer_new, NULL, 2, methods, &cls) == napi_ok) {
    napi_set_named_property(env, exports, "GzipIndexer", cls);
  }
  napi_property_descriptor fns[] = {
    {"gzipInflateFrom", NULL, js_inflate_from, NULL, NULL, NULL, napi_default, NULL},
    {"gzipInflateFromAsync", NULL, js_inflate_from_async, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, fns);
}
