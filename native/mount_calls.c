/*
 * mount(2) and umount2(2), run on libuv's thread pool. lazyroot mounted
 * overlayfs and unmounted with the mount/umount binaries (and fuse-native
 * with `sh -c fusermount -uz`): each a fork of a big Node process and an
 * exec, 10-20 ms apiece on a container's start and teardown. As root the
 * system calls do the same in microseconds. Off the main thread because the
 * kernel may ask this very process something first: an overlayfs mount over
 * a FUSE lower this process serves looks its lower up through FUSE, and a
 * blocked event loop would never answer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <node_api.h>

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int unmount; /* 0: mount(2); 1: umount2(2) */
  char *source, *target, *fstype, *data;
  unsigned long flags;
  int error;
} mount_call_t;

static void call_run(napi_env env, void *p) {
  mount_call_t *c = p;
  int rc = c->unmount ? umount2(c->target, (int)c->flags) : mount(c->source, c->target, c->fstype, c->flags, c->data);
  c->error = rc == 0 ? 0 : errno;
}

static void call_done(napi_env env, napi_status status, void *p) {
  mount_call_t *c = p;
  napi_value result;
  if (status != napi_ok && c->error == 0) c->error = ECANCELED;
  if (c->error == 0) {
    napi_get_undefined(env, &result);
    napi_resolve_deferred(env, c->deferred, result);
  } else {
    /* The errno's name (EBUSY, EINVAL, ENOENT…) as `code`, strerror as the message; the caller names the path. */
    const char *name = c->error == EBUSY ? "EBUSY" : c->error == EINVAL ? "EINVAL" : c->error == ENOENT ? "ENOENT" : c->error == EPERM ? "EPERM" : c->error == ENOTDIR ? "ENOTDIR" : c->error == ENODEV ? "ENODEV" : "EIO";
    napi_value code, msg, err, errnum;
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, strerror(c->error), NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, code, msg, &err);
    napi_set_named_property(env, err, "code", code);
    napi_create_int32(env, -c->error, &errnum);
    napi_set_named_property(env, err, "errno", errnum);
    napi_reject_deferred(env, c->deferred, err);
  }
  napi_delete_async_work(env, c->work);
  free(c->source);
  free(c->target);
  free(c->fstype);
  free(c->data);
  free(c);
}

/* A copy of string argument v (NULL for null/undefined), or -1 on a bad argument. */
static int copy_string(napi_env env, napi_value v, char **out) {
  napi_valuetype type;
  size_t len;
  *out = NULL;
  if (napi_typeof(env, v, &type) != napi_ok) return -1;
  if (type == napi_null || type == napi_undefined) return 0;
  if (type != napi_string || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return -1;
  if (!(*out = malloc(len + 1))) return -1;
  return napi_get_value_string_utf8(env, v, *out, len + 1, &len) == napi_ok ? 0 : -1;
}

static napi_value queue(napi_env env, mount_call_t *c) {
  napi_value promise, name;
  if (napi_create_promise(env, &c->deferred, &promise) != napi_ok) return NULL;
  napi_create_string_utf8(env, c->unmount ? "lazyroot:umount2" : "lazyroot:mount", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, call_run, call_done, c, &c->work) != napi_ok) return NULL;
  if (napi_queue_async_work(env, c->work) != napi_ok) return NULL;
  return promise;
}

/* mountAsync(source, target, fstype, flags, data): a promise. */
static napi_value js_mount_async(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  double flags;
  mount_call_t *c = calloc(1, sizeof *c);
  if (!c || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 || copy_string(env, argv[0], &c->source) || copy_string(env, argv[1], &c->target) ||
      !c->target || copy_string(env, argv[2], &c->fstype) || napi_get_value_double(env, argv[3], &flags) != napi_ok || copy_string(env, argv[4], &c->data)) {
    if (c) free(c->source), free(c->target), free(c->fstype), free(c->data), free(c);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "mountAsync(source, target, fstype, flags, data): bad arguments");
    return NULL;
  }
  c->flags = (unsigned long)flags;
  napi_value promise = queue(env, c);
  if (!promise) napi_throw_error(env, "EINVAL", "mountAsync: could not start");
  return promise;
}

/* umountAsync(target, flags): a promise. */
static napi_value js_umount_async(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  double flags;
  mount_call_t *c = calloc(1, sizeof *c);
  if (!c || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || copy_string(env, argv[0], &c->target) || !c->target ||
      napi_get_value_double(env, argv[1], &flags) != napi_ok) {
    if (c) free(c->target), free(c);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "umountAsync(target, flags): bad arguments");
    return NULL;
  }
  c->unmount = 1;
  c->flags = (unsigned long)flags;
  napi_value promise = queue(env, c);
  if (!promise) napi_throw_error(env, "EINVAL", "umountAsync: could not start");
  return promise;
}

void register_mount_calls(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    {"mountAsync", NULL, js_mount_async, NULL, NULL, NULL, napi_default, NULL},
    {"umountAsync", NULL, js_umount_async, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, 2, fns);
}
