/*
 * Exact stat times through fuse-native (see native-notes/fuse-native.md,
 * "Stat times"). fuse-native 2.2.6 hands its C side a stat as 32-bit words
 * and turns each time into a timespec as unsigned milliseconds:
 *   ms = high * 2^32 + low;  tv_sec = ms / 1000;  tv_nsec = (ms % 1000) * 10^6
 * so nanoseconds and negative seconds cannot pass. That conversion is exact
 * and reversible, though: ms == tv_sec * 1000 + tv_nsec / 10^6, all 64 bits.
 *
 * This file defines `fuse_new`. The addon is loaded with RTLD_GLOBAL (src/native.ts)
 * before fuse-native's binding first calls fuse_new (it is bound lazily, at its
 * first call), so that call lands here: we wrap the getattr and fgetattr
 * operations and call libfuse's own fuse_new. After fuse-native has filled a stat,
 * the wrapper looks at st_dev (which libfuse never sends to the kernel): when
 * FuseBinding put `exact_times_tag` there, the atime word pair holds the
 * nanoseconds and the mtime pair the seconds as a 64-bit two's complement
 * number, and all three times become that timespec. A stat without the tag is
 * left as fuse-native made it. fuseExactTimes() tells JS whether the wrapper
 * is in place (a fuse_new passed through it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <node_api.h>

/* Must match src/fs/fuse-binding.ts. */
#define EXACT_TIMES_TAG 0x6c7a7274u /* 'lzrt' */

struct fuse;
struct fuse_chan;
struct fuse_args;
struct fuse_file_info;
typedef int (*getattr_fn)(const char *, struct stat *);
typedef int (*fgetattr_fn)(const char *, struct stat *, struct fuse_file_info *);
typedef struct fuse *(*fuse_new_fn)(struct fuse_chan *, struct fuse_args *, const void *, size_t, void *);

/*
 * struct fuse_operations of libfuse 2.9 (fuse.h), whose layout is frozen:
 * every member is a pointer; getattr is the first, fgetattr the 35th.
 */
#define OP_GETATTR 0
#define OP_FGETATTR 34
#define OP_SLOTS_MAX 64

static getattr_fn real_getattr;
static fgetattr_fn real_fgetattr;
static volatile int wrapped;

static uint64_t words_of(const struct timespec *ts) {
  return (uint64_t)ts->tv_sec * 1000u + (uint64_t)ts->tv_nsec / 1000000u;
}

static void exact_times(struct stat *st) {
  if ((uint32_t)st->st_dev != EXACT_TIMES_TAG) return;
  struct timespec t;
  t.tv_nsec = (long)(words_of(&st->st_atim) % 1000000000u);
  t.tv_sec = (time_t)(int64_t)words_of(&st->st_mtim);
  st->st_atim = t;
  st->st_mtim = t;
  st->st_ctim = t;
  st->st_dev = 0;
}

static int exact_getattr(const char *path, struct stat *st) {
  int r = real_getattr(path, st);
  if (r == 0) exact_times(st);
  return r;
}

static int exact_fgetattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  int r = real_fgetattr(path, st, fi);
  if (r == 0) exact_times(st);
  return r;
}

struct fuse *fuse_new(struct fuse_chan *ch, struct fuse_args *args, const void *op, size_t op_size, void *user_data) {
  static fuse_new_fn real;
  if (!real) {
    /* libfuse.so.2 is loaded already, as fuse-native's dependency; this finds that copy. */
    void *lib = dlopen("libfuse.so.2", RTLD_LAZY | RTLD_NOLOAD);
    if (!lib) lib = dlopen("libfuse.so.2", RTLD_LAZY);
    if (lib) real = (fuse_new_fn)dlvsym(lib, "fuse_new", "FUSE_2.6");
    if (!real) return NULL;
  }
  void *slots[OP_SLOTS_MAX];
  if (op_size > sizeof slots || op_size < (OP_FGETATTR + 1) * sizeof(void *)) return real(ch, args, op, op_size, user_data);
  memcpy(slots, op, op_size);
  if (slots[OP_GETATTR]) {
    real_getattr = (getattr_fn)slots[OP_GETATTR];
    slots[OP_GETATTR] = (void *)exact_getattr;
  }
  if (slots[OP_FGETATTR]) {
    real_fgetattr = (fgetattr_fn)slots[OP_FGETATTR];
    slots[OP_FGETATTR] = (void *)exact_fgetattr;
  }
  wrapped = 1;
  return real(ch, args, slots, op_size, user_data); /* libfuse copies the table */
}

/* fuseExactTimes() -> boolean: a fuse_new has gone through the wrapper above. */
static napi_value js_fuse_exact_times(napi_env env, napi_callback_info info) {
  napi_value result;
  napi_get_boolean(env, wrapped != 0, &result);
  return result;
}

void register_fuse_times(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"fuseExactTimes", NULL, js_fuse_exact_times, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
