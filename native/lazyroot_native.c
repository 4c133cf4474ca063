/*
 * System calls Node.js does not expose, needed to unpack layers exactly:
 * mknod (device nodes, fifos, overlayfs whiteouts as 0/0 character devices)
 * and the l*xattr family (PAX SCHILY.xattr records, security.capability,
 * trusted.overlay.opaque). Everything here acts on the path itself, never
 * following a final symlink, and throws an Error with the errno's code.
 * Also fcntl(F_SETFD, FD_CLOEXEC): libfuse opens /dev/fuse without it, and a
 * child that inherits that descriptor keeps a dead daemon's mount hanging;
 * and utimensat/futimens, because Node sets times through a double of
 * seconds, which cannot carry nanoseconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <node_api.h>

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      napi_throw_error(env, "EINVAL", "lazyroot_native: bad arguments"); \
      return NULL;                                                      \
    }                                                                   \
  } while (0)

static const char *errno_code(int e) {
  switch (e) {
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOTSUP: return "ENOTSUP";
    case ENODATA: return "ENODATA";
    case ERANGE: return "ERANGE";
    case ENOSPC: return "ENOSPC";
    case ENOTDIR: return "ENOTDIR";
    case EINVAL: return "EINVAL";
    case E2BIG: return "E2BIG";
    case EROFS: return "EROFS";
    default: return "EIO";
  }
}

static napi_value throw_errno(napi_env env, const char *syscall, const char *path) {
  int e = errno;
  char message[4200];
  snprintf(message, sizeof message, "%s: %s '%s'", errno_code(e), syscall, path);
  napi_value code, msg, err, errnum;
  napi_create_string_utf8(env, errno_code(e), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &err);
  napi_create_int32(env, -e, &errnum);
  napi_set_named_property(env, err, "errno", errnum);
  napi_set_named_property(env, err, "syscall", (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &msg), msg));
  napi_throw(env, err);
  return NULL;
}

/* Reads argument i as a NUL-terminated UTF-8 string into buf. */
static int get_string(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) return 0;
  return len < size - 1;
}

/* mknod(path, mode, major, minor): mode includes the file type bits. */
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  char path[4096];
  uint32_t mode, major, minor;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4 || !get_string(env, argv[0], path, sizeof path)) CHECK(napi_invalid_arg);
  CHECK(napi_get_value_uint32(env, argv[1], &mode));
  CHECK(napi_get_value_uint32(env, argv[2], &major));
  CHECK(napi_get_value_uint32(env, argv[3], &minor));
  if (mknod(path, (mode_t)mode, makedev(major, minor)) != 0) return throw_errno(env, "mknod", path);
  return NULL;
}

/* lsetxattr(path, name, value: Buffer) */
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char path[4096], name[256];
  void *data;
  size_t length;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || !get_string(env, argv[0], path, sizeof path) || !get_string(env, argv[1], name, sizeof name)) CHECK(napi_invalid_arg);
  CHECK(napi_get_buffer_info(env, argv[2], &data, &length));
  if (lsetxattr(path, name, data, length, 0) != 0) return throw_errno(env, "lsetxattr", path);
  return NULL;
}

/* lgetxattr(path, name) -> Buffer, or undefined when the attribute is absent. */
static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  char path[4096], name[256];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_string(env, argv[0], path, sizeof path) || !get_string(env, argv[1], name, sizeof name)) CHECK(napi_invalid_arg);
  for (;;) {
    ssize_t size = lgetxattr(path, name, NULL, 0);
    if (size < 0) {
      if (errno == ENODATA) return NULL;
      return throw_errno(env, "lgetxattr", path);
    }
    void *data;
    CHECK(napi_create_buffer(env, (size_t)size, &data, &result));
    ssize_t got = lgetxattr(path, name, data, (size_t)size);
    if (got == size) return result;
    if (got < 0 && errno != ERANGE) return throw_errno(env, "lgetxattr", path);
    /* The value changed size between the calls: ask again. */
  }
}

/* llistxattr(path) -> string[] */
static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  char path[4096];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_string(env, argv[0], path, sizeof path)) CHECK(napi_invalid_arg);
  for (;;) {
    ssize_t size = llistxattr(path, NULL, 0);
    if (size < 0) {
      if (errno == ENOTSUP) size = 0;
      else return throw_errno(env, "llistxattr", path);
    }
    char *names = malloc((size_t)size + 1);
    if (!names) return throw_errno(env, "malloc", path);
    ssize_t got = size == 0 ? 0 : llistxattr(path, names, (size_t)size);
    if (got < 0 && errno == ERANGE) {
      free(names);
      continue;
    }
    if (got < 0) {
      free(names);
      return throw_errno(env, "llistxattr", path);
    }
    CHECK(napi_create_array(env, &result));
    uint32_t index = 0;
    for (ssize_t i = 0; i < got;) {
      size_t len = strlen(names + i);
      napi_value name;
      napi_create_string_utf8(env, names + i, len, &name);
      napi_set_element(env, result, index++, name);
      i += (ssize_t)len + 1;
    }
    free(names);
    return result;
  }
}

/* lremovexattr(path, name) */
static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char path[4096], name[256];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_string(env, argv[0], path, sizeof path) || !get_string(env, argv[1], name, sizeof name)) CHECK(napi_invalid_arg);
  if (lremovexattr(path, name) != 0) return throw_errno(env, "lremovexattr", path);
  return NULL;
}

/* closeOnExec(fd): sets FD_CLOEXEC, so no child process inherits the descriptor. */
static napi_value js_close_on_exec(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  char name[32];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) CHECK(napi_invalid_arg);
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) != 0) {
    snprintf(name, sizeof name, "fd %d", fd);
    return throw_errno(env, "fcntl", name);
  }
  return NULL;
}

/*
 * utimens(target, atimeSec, atimeNsec, mtimeSec, mtimeNsec): a string target
 * is a path, set with utimensat(AT_SYMLINK_NOFOLLOW) (a symlink's own times);
 * a number is an open descriptor, set with futimens. Seconds may be negative
 * (before 1970); nanoseconds are 0..999999999.
 */
static napi_value js_utimens(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  char path[4096];
  int64_t asec, msec;
  uint32_t ansec, mnsec;
  napi_valuetype kind;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) CHECK(napi_invalid_arg);
  CHECK(napi_get_value_int64(env, argv[1], &asec));
  CHECK(napi_get_value_uint32(env, argv[2], &ansec));
  CHECK(napi_get_value_int64(env, argv[3], &msec));
  CHECK(napi_get_value_uint32(env, argv[4], &mnsec));
  if (ansec > 999999999 || mnsec > 999999999) CHECK(napi_invalid_arg);
  struct timespec times[2] = {{.tv_sec = (time_t)asec, .tv_nsec = ansec}, {.tv_sec = (time_t)msec, .tv_nsec = mnsec}};
  CHECK(napi_typeof(env, argv[0], &kind));
  if (kind == napi_number) {
    int32_t fd;
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    if (futimens(fd, times) != 0) {
      snprintf(path, sizeof path, "fd %d", fd);
      return throw_errno(env, "futimens", path);
    }
    return NULL;
  }
  if (!get_string(env, argv[0], path, sizeof path)) CHECK(napi_invalid_arg);
  if (utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW) != 0) return throw_errno(env, "utimensat", path);
  return NULL;
}

void register_gzip_index(napi_env env, napi_value exports);
void register_fuse_times(napi_env env, napi_value exports);
void register_gzip_member(napi_env env, napi_value exports);
void register_gzip_window(napi_env env, napi_value exports);
void register_mount_calls(napi_env env, napi_value exports);
void register_spawn(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_default, NULL},
    {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_default, NULL},
    {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_default, NULL},
    {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_default, NULL},
    {"lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_default, NULL},
    {"closeOnExec", NULL, js_close_on_exec, NULL, NULL, NULL, napi_default, NULL},
    {"utimens", NULL, js_utimens, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  register_gzip_index(env, exports);
  register_fuse_times(env, exports);
  register_gzip_member(env, exports);
  register_gzip_window(env, exports);
  register_mount_calls(env, exports);
  register_spawn(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
