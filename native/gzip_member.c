/*
 * gzipInflateMemberAsync(member, limit) -> Promise<Buffer>: inflates a gzip
 * member (and any members right after it) on libuv's thread pool, up to
 * `limit` output bytes.
 *
 * Why by hand: an eStargz read inflates one small gzip member per file chunk,
 * thousands per container start. Node's zlib.gunzip(buffer, cb) builds a
 * Gunzip stream for each call (handle, 16 KiB chunk buffers, stream state,
 * callbacks per chunk): measured, that machinery cost more CPU than the
 * inflating and most of the garbage collection of a cold eStargz mount under
 * 16 readers. Here one call is one zlib stream on the stack, one output
 * allocation grown as needed, and one copy into a JS Buffer (a copy, not an
 * external buffer: V8 then counts the memory and collects it in time).
 *
 * gzipInflateMemberHashAsync(member, limit, from, length) -> Promise<[Buffer, hex]>:
 * the same, and the SHA-256 of output bytes [from, from + length) computed on
 * the same pool thread (an empty string when the output is shorter). An
 * eStargz chunk is checked against its digest as it is inflated: hashing on
 * the event loop was 30 ms of a cold start that fetched 15 MB ahead (its
 * recorded profile), time the mount and the container's first reads waited.
 * SHA-256 is OpenSSL's, which Node carries and exports to addons.
 *
 * Stops at the end of the input, at bytes after a member that are not another
 * gzip member (ignored, as zlib.gunzip ignores them), or at `limit`, whichever
 * is first; the caller checks the length it needed. Errors carry
 * `code`: Z_DATA_ERROR (not gzip, or corrupt), Z_BUF_ERROR (the member is
 * cut short), ENOMEM.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <node_api.h>
#include <zlib.h>
#include <openssl/sha.h>

#define MODE_GZIP 31 /* 15 + 16: gzip header and trailer */

typedef struct {
  const unsigned char *in;
  size_t in_len;
  size_t limit;
  unsigned char *out;
  size_t out_len;
  const char *error_code;
  char error[200];
  napi_async_work work;
  napi_deferred deferred;
  napi_ref input_ref;
  int hash; /* 1: SHA-256 of out[hash_from, hash_from + hash_len) into digest */
  size_t hash_from, hash_len;
  int hashed;
  unsigned char digest[SHA256_DIGEST_LENGTH];
} member_t;

/* What a job inflated, shrunk to its length on the pool thread: it is handed over as it is (hand_over), so no room past its bytes is kept alive with them. */
static void shrink_to_length(unsigned char **out, size_t len) {
  if (!*out || len == 0) return;
  unsigned char *fit = realloc(*out, len);
  if (fit) *out = fit;
}

static void member_run(napi_env env, void *data) {
  (void)env;
  member_t *m = data;
  z_stream s;
  memset(&s, 0, sizeof s);
  if (inflateInit2(&s, MODE_GZIP) != Z_OK) {
    m->error_code = "ENOMEM";
    snprintf(m->error, sizeof m->error, "gzip member: out of memory");
    return;
  }
  /* A first guess: small members (a file's chunk) inflate to a few times their size. */
  size_t cap = m->in_len * 4 + 4096;
  if (cap > m->limit) cap = m->limit;
  if (cap == 0) cap = 1;
  m->out = malloc(cap);
  if (!m->out) goto nomem;
  s.next_in = (unsigned char *)m->in;
  s.avail_in = m->in_len > UINT32_MAX ? UINT32_MAX : (uInt)m->in_len;
  for (;;) {
    if (m->out_len == cap) {
      if (cap >= m->limit) break; /* as much as was asked for */
      size_t next = cap * 2 > m->limit ? m->limit : cap * 2;
      unsigned char *grown = realloc(m->out, next);
      if (!grown) goto nomem;
      m->out = grown;
      cap = next;
    }
    size_t room = cap - m->out_len;
    s.next_out = m->out + m->out_len;
    s.avail_out = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
    uInt before = s.avail_out;
    int ret = inflate(&s, Z_NO_FLUSH);
    m->out_len += before - s.avail_out;
    if (ret == Z_STREAM_END) {
      /* Another member right after (an eStargz chunk's range ends with the members of the tar
       * headers that follow it): inflated on, as zlib.gunzip does. Anything else ends it. */
      if (s.avail_in < 2 || s.next_in[0] != 0x1f || s.next_in[1] != 0x8b) break;
      if (inflateReset(&s) != Z_OK) {
        m->error_code = "Z_DATA_ERROR";
        snprintf(m->error, sizeof m->error, "gzip member: cannot restart after %zu bytes", m->in_len - s.avail_in);
        goto out;
      }
      continue;
    }
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && s.avail_in == 0) {
      m->error_code = "Z_BUF_ERROR";
      snprintf(m->error, sizeof m->error, "the gzip member ends early (%zu bytes in, %zu out)", m->in_len, m->out_len);
      goto out;
    }
    if (ret == Z_BUF_ERROR) continue; /* no room: grown above */
    m->error_code = ret == Z_MEM_ERROR ? "ENOMEM" : "Z_DATA_ERROR";
    snprintf(m->error, sizeof m->error, "corrupt gzip member (%s) at byte %zu of %zu", s.msg ? s.msg : "invalid data", m->in_len - s.avail_in, m->in_len);
    goto out;
  }
  inflateEnd(&s);
  shrink_to_length(&m->out, m->out_len);
  if (m->hash && m->out_len >= m->hash_from && m->out_len - m->hash_from >= m->hash_len) {
    SHA256(m->out + m->hash_from, m->hash_len, m->digest);
    m->hashed = 1;
  }
  return;
nomem:
  m->error_code = "ENOMEM";
  snprintf(m->error, sizeof m->error, "gzip member: out of memory");
out:
  inflateEnd(&s);
}

/*
 * What a pool job inflated, handed to JS as it is instead of copied on the
 * event loop: a copy of python3's binary (6.8 MB inflated, its fresh pages
 * faulted in) took 18-21 ms of the main thread on the bench machine, while
 * FUSE operations and a container's start waited behind it. `out` is first
 * shrunk to its length on the pool thread (the run functions). V8 is told of
 * the memory (napi_adjust_external_memory), so the GC weighs it as its own,
 * and of its release when the Buffer is collected.
 */
static void free_handed_over(napi_env env, void *data, void *hint) {
  int64_t unused;
  napi_adjust_external_memory(env, -(int64_t)(uintptr_t)hint, &unused);
  free(data);
}

/* A Buffer over `*out` (len > 0); on success `*out` belongs to it and is set to NULL. Else a copy, `*out` left. */
static napi_status hand_over(napi_env env, unsigned char **out, size_t len, napi_value *result) {
  if (napi_create_external_buffer(env, len, *out, free_handed_over, (void *)(uintptr_t)len, result) == napi_ok) {
    int64_t unused;
    napi_adjust_external_memory(env, (int64_t)len, &unused);
    *out = NULL;
    return napi_ok;
  }
  return napi_create_buffer_copy(env, len, *out, NULL, result);
}

static void member_complete(napi_env env, napi_status status, void *data) {
  member_t *m = data;
  napi_value value;
  if (status != napi_ok && !m->error_code) {
    m->error_code = "ECANCELED";
    snprintf(m->error, sizeof m->error, "gzipInflateMemberAsync: cancelled");
  }
  if (!m->error_code) {
    if (m->out_len == 0) {
      void *unused;
      if (napi_create_buffer(env, 0, &unused, &value) != napi_ok) m->error_code = "ENOMEM";
    } else if (hand_over(env, &m->out, m->out_len, &value) != napi_ok) {
      m->error_code = "ENOMEM";
      snprintf(m->error, sizeof m->error, "gzip member: out of memory");
    }
  }
  if (m->error_code) {
    napi_value c, msg, err;
    napi_create_string_utf8(env, m->error_code, NAPI_AUTO_LENGTH, &c);
    napi_create_string_utf8(env, m->error, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, c, msg, &err);
    napi_set_named_property(env, err, "code", c);
    napi_reject_deferred(env, m->deferred, err);
  } else if (m->hash) {
    napi_value pair, hex;
    char text[SHA256_DIGEST_LENGTH * 2 + 1] = "";
    if (m->hashed)
      for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) snprintf(text + 2 * i, 3, "%02x", m->digest[i]);
    napi_create_array_with_length(env, 2, &pair);
    napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, &hex);
    napi_set_element(env, pair, 0, value);
    napi_set_element(env, pair, 1, hex);
    napi_resolve_deferred(env, m->deferred, pair);
  } else {
    napi_resolve_deferred(env, m->deferred, value);
  }
  free(m->out);
  napi_delete_reference(env, m->input_ref);
  napi_delete_async_work(env, m->work);
  free(m);
}

static napi_value start_member(napi_env env, napi_callback_info info, int hash) {
  size_t argc = 4;
  napi_value argv[4], promise, name;
  double limit, from = 0, length = 0;
  void *p;
  member_t *m = calloc(1, sizeof *m);
  if (!m) {
    napi_throw_error(env, "ENOMEM", "gzipInflateMemberAsync: out of memory");
    return NULL;
  }
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_buffer_info(env, argv[0], &p, &m->in_len) != napi_ok ||
      napi_get_value_double(env, argv[1], &limit) != napi_ok || !(limit >= 0) || limit > (double)(SIZE_MAX / 4) ||
      (hash && (argc < 4 || napi_get_value_double(env, argv[2], &from) != napi_ok || napi_get_value_double(env, argv[3], &length) != napi_ok || !(from >= 0) ||
                !(length >= 0) || from + length > limit))) {
    free(m);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "gzipInflateMember[Hash]Async(member: Buffer, limit: number[, from: number, length: number]): bad arguments");
    return NULL;
  }
  m->hash = hash;
  m->hash_from = (size_t)from;
  m->hash_len = (size_t)length;
  m->in = p;
  m->limit = (size_t)limit;
  if (napi_create_promise(env, &m->deferred, &promise) != napi_ok) goto fail;
  /* The input must outlive the work: held until it completes. */
  if (napi_create_reference(env, argv[0], 1, &m->input_ref) != napi_ok) goto fail;
  napi_create_string_utf8(env, "lazyroot:gzipInflateMember", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, member_run, member_complete, m, &m->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, m->work) != napi_ok) goto fail;
  return promise;
fail:
  napi_throw_error(env, "EINVAL", "gzipInflateMemberAsync: could not start");
  return NULL; /* m leaks here only if N-API itself is failing */
}

/*
 * gzipCheckChunksAsync(bytes, spec: Float64Array, digests: Buffer, tailMax)
 *   -> Promise<[out: Buffer, at: Float64Array, ok: Uint8Array]>
 *
 * Many eStargz chunks of one fetched range in one pool job: chunk k's member
 * is bytes[spec[4k], spec[4k+1]), its data [spec[4k+2], +spec[4k+3]) of what
 * that member inflates to, its SHA-256 digests[32k..32k+32). Each member is
 * inflated up to its chunk and `tailMax` bytes more (the tar headers after
 * it); what it inflated to is appended to `out` at at[2k] (length at[2k+1]);
 * ok[k] is 1 when the chunk is whole and matches its digest, 0 otherwise.
 *
 * Why: a region or a profile brings hundreds of small members. One promise,
 * buffer and hash call per chunk on the event loop (and the garbage of it)
 * was most of the main thread's time in a profiled start and under 16
 * concurrent readers; here it is one call, one output buffer.
 */
typedef struct {
  const unsigned char *in;
  size_t in_len;
  double *spec;
  size_t count;
  const unsigned char *digests;
  size_t tail_max;
  unsigned char *out;
  size_t out_len, out_cap;
  double *at;
  unsigned char *ok;
  int failed; /* out of memory */
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[3];
} batch_t;

static int batch_room(batch_t *b, size_t more) {
  if (b->out_len + more <= b->out_cap) return 1;
  size_t cap = b->out_cap ? b->out_cap : 1 << 16;
  while (cap < b->out_len + more) cap *= 2;
  unsigned char *grown = realloc(b->out, cap);
  if (!grown) return 0;
  b->out = grown;
  b->out_cap = cap;
  return 1;
}

static void batch_run(napi_env env, void *data) {
  (void)env;
  batch_t *b = data;
  for (size_t k = 0; k < b->count && !b->failed; k++) {
    double *c = b->spec + 4 * k;
    size_t from = (size_t)c[0], to = (size_t)c[1], inner = (size_t)c[2], size = (size_t)c[3];
    size_t start = b->out_len;
    b->at[2 * k] = (double)start;
    b->at[2 * k + 1] = 0;
    b->ok[k] = 0;
    if (from > to || to > b->in_len) continue;
    size_t limit = inner + size + b->tail_max;
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, MODE_GZIP) != Z_OK) {
      b->failed = 1;
      break;
    }
    s.next_in = (unsigned char *)b->in + from;
    s.avail_in = (uInt)(to - from);
    size_t got = 0;
    int bad = 0;
    for (;;) {
      size_t want = (to - from) * 4 + 4096;
      if (want > limit - got) want = limit - got;
      if (want == 0) break; /* as much as was asked for */
      if (!batch_room(b, want)) {
        b->failed = 1;
        break;
      }
      s.next_out = b->out + start + got;
      s.avail_out = (uInt)want;
      int ret = inflate(&s, Z_NO_FLUSH);
      got += want - s.avail_out;
      b->out_len = start + got;
      if (ret == Z_STREAM_END) {
        if (s.avail_in < 2 || s.next_in[0] != 0x1f || s.next_in[1] != 0x8b) break;
        if (inflateReset(&s) != Z_OK) {
          bad = 1;
          break;
        }
        continue;
      }
      if (ret == Z_OK || (ret == Z_BUF_ERROR && s.avail_in > 0)) continue;
      bad = 1; /* corrupt, or cut short */
      break;
    }
    inflateEnd(&s);
    b->at[2 * k + 1] = (double)got;
    if (b->failed || bad || got < inner + size) continue;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(b->out + start + inner, size, digest);
    b->ok[k] = memcmp(digest, b->digests + 32 * k, 32) == 0;
  }
  if (b->out_len < b->out_cap) shrink_to_length(&b->out, b->out_len);
}

static void batch_complete(napi_env env, napi_status status, void *data) {
  batch_t *b = data;
  if (status != napi_ok || b->failed) {
    napi_value c, msg, err;
    napi_create_string_utf8(env, "ENOMEM", NAPI_AUTO_LENGTH, &c);
    napi_create_string_utf8(env, status != napi_ok ? "gzipCheckChunksAsync: cancelled" : "gzipCheckChunksAsync: out of memory", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, c, msg, &err);
    napi_set_named_property(env, err, "code", c);
    napi_reject_deferred(env, b->deferred, err);
  } else {
    napi_value out, at_buf, at, ok_buf, ok, triple;
    void *p;
    if (b->out_len) hand_over(env, &b->out, b->out_len, &out);
    else napi_create_buffer(env, 0, &p, &out);
    napi_create_arraybuffer(env, b->count * 2 * sizeof(double), &p, &at_buf);
    memcpy(p, b->at, b->count * 2 * sizeof(double));
    napi_create_typedarray(env, napi_float64_array, b->count * 2, at_buf, 0, &at);
    napi_create_arraybuffer(env, b->count ? b->count : 1, &p, &ok_buf);
    memcpy(p, b->ok, b->count);
    napi_create_typedarray(env, napi_uint8_array, b->count, ok_buf, 0, &ok);
    napi_create_array_with_length(env, 3, &triple);
    napi_set_element(env, triple, 0, out);
    napi_set_element(env, triple, 1, at);
    napi_set_element(env, triple, 2, ok);
    napi_resolve_deferred(env, b->deferred, triple);
  }
  for (int i = 0; i < 3; i++) napi_delete_reference(env, b->refs[i]);
  napi_delete_async_work(env, b->work);
  free(b->out);
  free(b->at);
  free(b->ok);
  free(b);
}

static napi_value js_check_chunks_async(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], promise, name;
  void *p;
  size_t spec_len, digests_len, offset;
  napi_typedarray_type type;
  napi_value ab;
  double tail_max;
  batch_t *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 || napi_get_buffer_info(env, argv[0], &p, &b->in_len) != napi_ok) goto bad;
  b->in = p;
  if (napi_get_typedarray_info(env, argv[1], &type, &spec_len, &p, &ab, &offset) != napi_ok || type != napi_float64_array || spec_len % 4) goto bad;
  b->spec = p;
  b->count = spec_len / 4;
  if (napi_get_buffer_info(env, argv[2], &p, &digests_len) != napi_ok || digests_len != 32 * b->count) goto bad;
  b->digests = p;
  if (napi_get_value_double(env, argv[3], &tail_max) != napi_ok || !(tail_max >= 0) || tail_max > 64 * 1024 * 1024) goto bad;
  b->tail_max = (size_t)tail_max;
  for (size_t k = 0; k < b->count; k++) {
    double *c = b->spec + 4 * k;
    if (!(c[0] >= 0 && c[1] >= c[0] && c[2] >= 0 && c[3] >= 0 && c[2] + c[3] < 1e15)) goto bad;
  }
  b->at = calloc(b->count * 2 + 1, sizeof(double));
  b->ok = calloc(b->count + 1, 1);
  if (!b->at || !b->ok) goto bad;
  if (napi_create_promise(env, &b->deferred, &promise) != napi_ok) goto bad;
  /* The inputs must outlive the work: held until it completes. */
  for (int i = 0; i < 3; i++) napi_create_reference(env, argv[i], 1, &b->refs[i]);
  napi_create_string_utf8(env, "lazyroot:gzipCheckChunks", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, batch_run, batch_complete, b, &b->work) != napi_ok || napi_queue_async_work(env, b->work) != napi_ok) {
    napi_throw_error(env, "EINVAL", "gzipCheckChunksAsync: could not start");
    return NULL;
  }
  return promise;
bad:
  free(b->at);
  free(b->ok);
  free(b);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "gzipCheckChunksAsync(bytes: Buffer, spec: Float64Array, digests: Buffer, tailMax: number): bad arguments");
  return NULL;
}

static napi_value js_inflate_member_async(napi_env env, napi_callback_info info) { return start_member(env, info, 0); }

static napi_value js_inflate_member_hash_async(napi_env env, napi_callback_info info) { return start_member(env, info, 1); }

void register_gzip_member(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    {"gzipInflateMemberAsync", NULL, js_inflate_member_async, NULL, NULL, NULL, napi_default, NULL},
    {"gzipInflateMemberHashAsync", NULL, js_inflate_member_hash_async, NULL, NULL, NULL, napi_default, NULL},
    {"gzipCheckChunksAsync", NULL, js_check_chunks_async, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 3, fns);
}
