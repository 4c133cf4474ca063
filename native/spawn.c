/*
 * Starting a child without fork(2)'s cost. libuv (Node 20's child_process)
 * forks, which copies the page tables of the whole process and makes every
 * page copy-on-write: in a mount daemon holding a lazy mount (150-300 MB
 * resident) spawning runc took 15-40 ms, and the daemon's own writes fault
 * afterwards. posix_spawn(3) in glibc clones with CLONE_VM|CLONE_VFORK: the
 * child borrows the parent's memory until it execs, whatever the size.
 *
 *   spawnProcess(args, env, fds) -> pid         (args[0] found on PATH; fds: [stdin, stdout, stderr], -1 for /dev/null)
 *   waitProcess(pid) -> Promise<[exitCode | null, signal | null]>
 *   makePipe() -> [fd, fd]                       (a connected socket pair, both close-on-exec:
 *                                                 as libuv gives children, so that ending our side
 *                                                 is a shutdown(2) the child reads as end of file)
 *
 * waitProcess waits on a thread of its own, not libuv's pool (a container
 * may run for hours; the pool's four threads serve the mount's reads), and
 * reaps only that pid: libuv reaps only the children it started itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <node_api.h>

static napi_value errno_error(napi_env env, int error, const char *what) {
  napi_value code, msg, err, errnum;
  const char *name = error == ENOENT ? "ENOENT" : error == EACCES ? "EACCES" : error == ENOEXEC ? "ENOEXEC" : error == ENOMEM ? "ENOMEM" : error == EAGAIN ? "EAGAIN" : "EIO";
  char text[256];
  snprintf(text, sizeof text, "%s: %s", what, strerror(error));
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, code, msg, &err);
  napi_set_named_property(env, err, "code", code);
  napi_create_int32(env, -error, &errnum);
  napi_set_named_property(env, err, "errno", errnum);
  return err;
}

/* A NULL-terminated copy of a JS array of strings, or NULL on a bad argument. */
static char **string_array(napi_env env, napi_value array) {
  uint32_t n;
  bool is_array;
  if (napi_is_array(env, array, &is_array) != napi_ok || !is_array || napi_get_array_length(env, array, &n) != napi_ok) return NULL;
  char **out = calloc((size_t)n + 1, sizeof *out);
  if (!out) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    napi_value item;
    size_t len;
    if (napi_get_element(env, array, i, &item) != napi_ok || napi_get_value_string_utf8(env, item, NULL, 0, &len) != napi_ok || !(out[i] = malloc(len + 1))) goto fail;
    napi_get_value_string_utf8(env, item, out[i], len + 1, &len);
  }
  return out;
fail:
  for (uint32_t i = 0; i < n; i++) free(out[i]);
  free(out);
  return NULL;
}

static void free_array(char **a) {
  if (!a) return;
  for (char **p = a; *p; p++) free(*p);
  free(a);
}

static napi_value js_spawn(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result = NULL;
  char **args = NULL, **envp = NULL;
  int fds[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) goto bad;
  args = string_array(env, argv[0]);
  envp = string_array(env, argv[1]);
  if (!args || !envp || !args[0]) goto bad;
  for (uint32_t i = 0; i < 3; i++) {
    napi_value v;
    if (napi_get_element(env, argv[2], i, &v) != napi_ok || napi_get_value_int32(env, v, &fds[i]) != napi_ok) goto bad;
  }

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  for (int i = 0; i < 3; i++) {
    if (fds[i] < 0) posix_spawn_file_actions_addopen(&actions, i, "/dev/null", O_RDWR, 0);
    /* Even onto itself: Node marks its own stdio close-on-exec, and glibc's dup2 action (2.29+) clears that flag. */
    else posix_spawn_file_actions_adddup2(&actions, fds[i], i);
  }
  /* Node ignores SIGPIPE and may block signals: the child starts with every signal at its default, none blocked. */
  sigset_t none, every;
  sigemptyset(&none);
  sigfillset(&every);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &every);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid;
  int rc = posix_spawnp(&pid, args[0], &actions, &attr, args, envp);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) napi_throw(env, errno_error(env, rc, args[0]));
  else napi_create_int32(env, pid, &result);
  free_array(args);
  free_array(envp);
  return result;
bad:
  free_array(args);
  free_array(envp);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "spawnProcess(args: string[], env: string[], fds: [in, out, err]): bad arguments");
  return NULL;
}

typedef struct {
  pid_t pid;
  int status, error;
  napi_deferred deferred;
  napi_threadsafe_function tsfn;
} wait_t;

static void *wait_thread(void *p) {
  wait_t *w = p;
  pid_t r;
  do r = waitpid(w->pid, &w->status, 0);
  while (r < 0 && errno == EINTR);
  w->error = r < 0 ? errno : 0;
  /* w is freed on the main thread once the call is delivered, maybe before the release below. */
  napi_threadsafe_function tsfn = w->tsfn;
  napi_call_threadsafe_function(tsfn, w, napi_tsfn_blocking);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  return NULL;
}

static void wait_done(napi_env env, napi_value js_callback, void *context, void *data) {
  wait_t *w = data;
  if (env) {
    if (w->error) {
      napi_reject_deferred(env, w->deferred, errno_error(env, w->error, "waitpid"));
    } else {
      napi_value pair, code, sig;
      napi_create_array_with_length(env, 2, &pair);
      if (WIFEXITED(w->status)) napi_create_int32(env, WEXITSTATUS(w->status), &code);
      else napi_get_null(env, &code);
      if (WIFSIGNALED(w->status)) napi_create_int32(env, WTERMSIG(w->status), &sig);
      else napi_get_null(env, &sig);
      napi_set_element(env, pair, 0, code);
      napi_set_element(env, pair, 1, sig);
      napi_resolve_deferred(env, w->deferred, pair);
    }
  }
  free(w);
}

static napi_value js_wait(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], promise, name;
  int32_t pid;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &pid) != napi_ok || pid <= 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "waitProcess(pid): bad arguments");
    return NULL;
  }
  wait_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->pid = pid;
  napi_create_promise(env, &w->deferred, &promise);
  napi_create_string_utf8(env, "lazyroot:waitpid", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, wait_done, &w->tsfn) != napi_ok) {
    free(w);
    napi_throw_error(env, "EIO", "waitProcess: could not start");
    return NULL;
  }
  pthread_t thread;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int rc = pthread_create(&thread, &attr, wait_thread, w);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    napi_release_threadsafe_function(w->tsfn, napi_tsfn_abort);
    free(w);
    napi_throw(env, errno_error(env, rc, "waitProcess"));
    return NULL;
  }
  return promise;
}

static napi_value js_pipe(napi_env env, napi_callback_info info) {
  int fds[2];
  napi_value pair, r, w;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    napi_throw(env, errno_error(env, errno, "socketpair"));
    return NULL;
  }
  napi_create_array_with_length(env, 2, &pair);
  napi_create_int32(env, fds[0], &r);
  napi_create_int32(env, fds[1], &w);
  napi_set_element(env, pair, 0, r);
  napi_set_element(env, pair, 1, w);
  return pair;
}

void register_spawn(napi_env env, napi_value exports) {
  napi_property_descriptor fns[] = {
    {"spawnProcess", NULL, js_spawn, NULL, NULL, NULL, napi_default, NULL},
    {"waitProcess", NULL, js_wait, NULL, NULL, NULL, napi_default, NULL},
    {"makePipe", NULL, js_pipe, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
}
