/*
 * lazyroot's command-line front end (bin/lazyroot execs it).
 *
 * `lazyroot run --lazy REF [-- CMD...]` in its plain form, with a warm
 * standby waiting, is handed whole to the standby over its Unix socket
 * (src/cli/run-handoff-client.ts does the same from Node; src/mount/run-channel.ts
 * is the protocol): one JSON request line, an `accepted` line, then frames
 * (type byte, 4-byte big-endian length, payload) carrying the container's
 * stdout and stderr, the caller's stdin and signals, and the exit status.
 * A plain `lazyroot mount REF DIR` goes to it the same way (a mount request,
 * then `ready` or `error`; src/mount/daemon-channel.ts), with the CLI's output.
 * Everything else, and that when no standby takes it, is the Node CLI, exec'd
 * in place of this process with the same argv.
 *
 * Written in C, by hand, because it is the whole point: starting Node costs
 * 90-130 ms on a 2-core machine (more with a cold page cache), which is most
 * of what a lazily started container's start costs on top of runc. This
 * process starts in about a millisecond and loads nothing; it must stay small
 * and agree with parseRunArgs and parseMountArgs in run-handoff-client.ts on
 * what a plain run and mount are, and with handMountOver on what it prints.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

/* ---- a growable byte buffer */

typedef struct {
  char *data;
  size_t len, cap;
} buf_t;

static void buf_grow(buf_t *b, size_t more) {
  if (b->len + more <= b->cap) return;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) {
    fputs("lazyroot: out of memory\n", stderr);
    exit(1);
  }
  b->data = p;
  b->cap = cap;
}

static void buf_add(buf_t *b, const char *s, size_t n) {
  buf_grow(b, n);
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

/* A JSON string: quotes, backslashes and control characters escaped; other bytes as they are (UTF-8). */
static void buf_json(buf_t *b, const char *s) {
  buf_add(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      buf_add(b, esc, 2);
    } else if (*p < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      buf_add(b, esc, 6);
    } else {
      buf_add(b, (const char *)p, 1);
    }
  }
  buf_add(b, "\"", 1);
}

/* ---- LAZYROOT_TRACE: `epoch-ms pid phase` lines, as src/trace.ts writes them */

static void trace(const char *phase) {
  const char *file = getenv("LAZYROOT_TRACE");
  if (!file || !*file) return;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  FILE *f = fopen(file, "a");
  if (!f) return;
  fprintf(f, "%lld.%d %d %s\n", (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000, (int)(tv.tv_usec % 1000) / 100, (int)getpid(), phase);
  fclose(f);
}

/* ---- falling back to the Node CLI */

static char root[PATH_MAX]; /* the package: this binary is ROOT/build/Release/lazyroot-front */
static char **saved_argv;

static void exec_node(void) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  char script[PATH_MAX + 32];
  snprintf(script, sizeof script, "%s/bin/lazyroot.js", root);
  int argc = 0;
  while (saved_argv[argc]) argc++;
  char **args = calloc((size_t)argc + 2, sizeof *args);
  if (!args) exit(1);
  args[0] = "node";
  args[1] = script;
  for (int i = 1; i < argc; i++) args[i + 1] = saved_argv[i];
  execvp("node", args);
  fprintf(stderr, "lazyroot: cannot start node: %s\n", strerror(errno));
  exit(1);
}

/* ---- what a plain run is (parseRunArgs in run-handoff-client.ts) */

typedef struct {
  const char *store;
  const char *ref;
  char **args;
  int nargs;
  int insecure, remote_index;
  const char *deadline;
} run_t;

static int digits_only(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return 0;
  return 1;
}

static int parse_run(int argc, char **argv, run_t *r) {
  int i = 1;
  memset(r, 0, sizeof *r);
  r->remote_index = 1;
  for (; i < argc && strcmp(argv[i], "run") != 0; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--store") && i + 1 < argc) r->store = argv[++i];
    else if (!strncmp(a, "--store=", 8)) r->store = a + 8;
    else if (strcmp(a, "-q") && strcmp(a, "--quiet")) return 0;
  }
  if (i >= argc || strcmp(argv[i++], "run")) return 0;
  int lazy = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--lazy")) lazy = 1;
    else if (!strcmp(a, "--insecure")) r->insecure = 1;
    else if (!strcmp(a, "--no-remote-index")) r->remote_index = 0;
    else if (!strcmp(a, "--deadline-ms") && i + 1 < argc) r->deadline = argv[++i];
    else if (!strncmp(a, "--deadline-ms=", 14)) r->deadline = a + 14;
    else return 0;
  }
  if (!lazy || i >= argc || (r->store && !*r->store)) return 0;
  r->ref = argv[i++];
  if (r->deadline && (!digits_only(r->deadline) || strtoull(r->deadline, NULL, 10) == 0 || strlen(r->deadline) > 15)) return 0;
  if (i < argc && !strcmp(argv[i], "--")) i++;
  else
    for (int j = i; j < argc; j++)
      if (argv[j][0] == '-') return 0;
  r->args = argv + i;
  r->nargs = argc - i;
  return 1;
}

/* path.resolve(cwd, p): absolute, without `.`, `..`, repeated or trailing slashes. */
static void resolve_path(const char *cwd, const char *p, char *out, size_t size) {
  char joined[PATH_MAX * 2];
  if (p[0] == '/') snprintf(joined, sizeof joined, "%s", p);
  else snprintf(joined, sizeof joined, "%s/%s", cwd, p);
  size_t n = 0;
  out[0] = '\0';
  for (char *seg = strtok(joined, "/"); seg; seg = strtok(NULL, "/")) {
    if (!strcmp(seg, ".")) continue;
    if (!strcmp(seg, "..")) {
      while (n > 0 && out[n - 1] != '/') n--;
      if (n > 0) n--;
      out[n] = '\0';
      continue;
    }
    n += (size_t)snprintf(out + n, size - n, "/%s", seg);
    if (n >= size) n = size - 1;
  }
  if (n == 0) snprintf(out, size, "/");
}

/* ---- the standby's socket (standbyPaths in src/mount/standby.ts) */

static int standby_socket(char *path, size_t size) {
  const char *dir = getenv("LAZYROOT_STANDBY_DIR");
  char fallback[PATH_MAX];
  if (!dir) {
    if (getuid() == 0) dir = "/run/lazyroot";
    else {
      const char *tmp = getenv("TMPDIR");
      if (!tmp || !*tmp) tmp = "/tmp";
      size_t n = strlen(tmp);
      while (n > 1 && tmp[n - 1] == '/') n--;
      snprintf(fallback, sizeof fallback, "%.*s/lazyroot-%u", (int)n, tmp, (unsigned)getuid());
      dir = fallback;
    }
  }
  /* The name carries a stamp of this build (standby.js's inode and mtime): a standby of other code is never used. */
  char self[PATH_MAX + 32];
  snprintf(self, sizeof self, "%s/dist/src/mount/standby.js", root);
  struct stat st;
  if (stat(self, &st) != 0) return -1;
  unsigned long long ms = (unsigned long long)st.st_mtim.tv_sec * 1000ULL + (unsigned long long)st.st_mtim.tv_nsec / 1000000ULL;
  int n = snprintf(path, size, "%s/standby-%llx-%llx.sock", dir, (unsigned long long)st.st_ino, ms);
  return n > 0 && (size_t)n < size ? 0 : -1;
}

/* ---- the conversation */

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int send_frame(int fd, char type, const char *payload, uint32_t n) {
  unsigned char head[5] = {(unsigned char)type, (unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8), (unsigned char)n};
  if (write_all(fd, (const char *)head, 5) != 0) return -1;
  return n ? write_all(fd, payload, n) : 0;
}

static volatile sig_atomic_t pending_signal;
static void on_signal(int sig) { pending_signal = sig; }

/* The string value after `"key":"` in a flat JSON text, unescaped into out (only what the standby writes). */
static int json_string_after(const char *json, const char *key, char *out, size_t size) {
  const char *p = strstr(json, key);
  if (!p) return 0;
  p += strlen(key);
  size_t n = 0;
  for (; *p && *p != '"' && n + 1 < size; p++) {
    char c = *p;
    if (c == '\\' && p[1]) {
      p++;
      c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p == 'u' ? '?' : *p;
      if (*p == 'u') p += strlen(p) >= 5 ? 4 : strlen(p) - 1;
    }
    out[n++] = c;
  }
  out[n] = '\0';
  return 1;
}

/* The exit frame's JSON: `{"code":N}` or `{"error":{"code":"…","message":"…"}}` → the process's exit code. */
static int exit_code_of(const char *json) {
  char message[8192];
  if (json_string_after(json, "\"message\":\"", message, sizeof message)) {
    fprintf(stderr, "lazyroot: %s\n", message);
    return strstr(json, "\"code\":\"INVALID_ARGUMENT\"") || strstr(json, "\"code\":\"INVALID_REFERENCE\"") ? 2 : 1;
  }
  const char *p = strstr(json, "\"code\":");
  return p ? atoi(p + 7) : 1;
}

/* After `accepted`: relays frames until the exit status; returns the exit code. */
static int relay(int sock, buf_t *in) {
  static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP};
  static const char *names[] = {"SIGINT", "SIGTERM", "SIGHUP"};
  sigset_t block, waiting;
  sigemptyset(&block);
  for (int i = 0; i < 3; i++) sigaddset(&block, forwarded[i]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  for (int i = 0; i < 3; i++) sigaction(forwarded[i], &sa, NULL);
  sigprocmask(SIG_BLOCK, &block, &waiting);
  signal(SIGPIPE, SIG_IGN);

  int stdin_open = 1;
  char chunk[65536];
  for (;;) {
    /* Whole frames first: output, then the exit status. */
    while (in->len >= 5) {
      unsigned char *h = (unsigned char *)in->data;
      uint32_t n = ((uint32_t)h[1] << 24) | ((uint32_t)h[2] << 16) | ((uint32_t)h[3] << 8) | h[4];
      if (in->len < 5 + (size_t)n) break;
      char type = (char)h[0];
      char *payload = in->data + 5;
      if (type == 'o') write_all(1, payload, n);
      else if (type == 'e') write_all(2, payload, n);
      else if (type == 'x') {
        trace("cli: exit status received");
        buf_t text = {0};
        buf_add(&text, payload, n);
        buf_add(&text, "", 1);
        return exit_code_of(text.data);
      } else if (type == 'd') {
        /* Declined before anything ran: the Node CLI runs it. */
        close(sock);
        exec_node();
      }
      memmove(in->data, in->data + 5 + n, in->len - 5 - n);
      in->len -= 5 + n;
    }
    if (pending_signal) {
      for (int i = 0; i < 3; i++)
        if (forwarded[i] == pending_signal) send_frame(sock, 's', names[i], (uint32_t)strlen(names[i]));
      pending_signal = 0;
    }
    struct pollfd fds[2] = {{.fd = sock, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    int r = ppoll(fds, stdin_open ? 2 : 1, NULL, &waiting);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents) {
      buf_grow(in, sizeof chunk);
      ssize_t got = read(sock, in->data + in->len, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      in->len += (size_t)got;
    }
    if (stdin_open && fds[1].revents) {
      ssize_t got = read(0, chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got > 0) send_frame(sock, 'i', chunk, (uint32_t)got);
      else {
        send_frame(sock, 'I', NULL, 0);
        stdin_open = 0;
      }
    }
  }
  fputs("lazyroot: the standby running this container went away without its exit status\n", stderr);
  return 1;
}

/* ---- a plain `mount REF DIR` (parseMountArgs and handMountOver in run-handoff-client.ts) */

typedef struct {
  const char *store, *ref, *dir, *deadline;
  int json, quiet, insecure, prefetch, remote_index;
} mount_t;

static int parse_mount(int argc, char **argv, mount_t *m) {
  int i = 1, positional = 0;
  memset(m, 0, sizeof *m);
  m->prefetch = m->remote_index = 1;
  for (; i < argc && strcmp(argv[i], "mount") != 0; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--store") && i + 1 < argc) m->store = argv[++i];
    else if (!strncmp(a, "--store=", 8)) m->store = a + 8;
    else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) m->quiet = 1;
    else if (!strcmp(a, "--json")) m->json = 1;
    else return 0;
  }
  if (i >= argc || strcmp(argv[i++], "mount")) return 0;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') {
      if (positional == 0) m->ref = a;
      else if (positional == 1) m->dir = a;
      positional++;
    } else if (!strcmp(a, "--insecure")) m->insecure = 1;
    else if (!strcmp(a, "--no-prefetch")) m->prefetch = 0;
    else if (!strcmp(a, "--no-remote-index")) m->remote_index = 0;
    else if (!strcmp(a, "--deadline-ms") && i + 1 < argc) m->deadline = argv[++i];
    else if (!strncmp(a, "--deadline-ms=", 14)) m->deadline = a + 14;
    else return 0; /* --stats, --foreground, --help, other flags: the CLI */
  }
  if (positional != 2 || (m->store && !*m->store)) return 0;
  if (m->deadline && (!digits_only(m->deadline) || strtoull(m->deadline, NULL, 10) == 0 || strlen(m->deadline) > 15)) return 0;
  return 1;
}

/* canonicalMountpoint (src/mount/mountpoint.ts): absolute, every symlink resolved, the last component's too, never stat'ed through. */
static int canonical_mountpoint(const char *cwd, const char *dir, char *out, size_t size, int hops) {
  char absolute[PATH_MAX];
  resolve_path(cwd, dir, absolute, sizeof absolute);
  if (!strcmp(absolute, "/")) return snprintf(out, size, "/") > 0 ? 0 : -1;
  char *slash = strrchr(absolute, '/');
  char parent_path[PATH_MAX], parent[PATH_MAX];
  snprintf(parent_path, sizeof parent_path, "%.*s", slash == absolute ? 1 : (int)(slash - absolute), absolute);
  if (!realpath(parent_path, parent)) return snprintf(out, size, "%s", absolute) < (int)size ? 0 : -1; /* a missing parent: the CLI reports it */
  char path[PATH_MAX * 2];
  snprintf(path, sizeof path, "%s/%s", strcmp(parent, "/") ? parent : "", slash + 1);
  struct stat st;
  if (lstat(path, &st) != 0 || !S_ISLNK(st.st_mode)) return snprintf(out, size, "%s", path) < (int)size ? 0 : -1;
  if (hops >= 40) return -1;
  char target[PATH_MAX];
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0) return -1;
  target[n] = '\0';
  return canonical_mountpoint(parent, target, out, size, hops + 1);
}

static int mkdir_p(const char *path, mode_t mode) {
  char partial[PATH_MAX];
  size_t n = strlen(path);
  if (n >= sizeof partial) return -1;
  for (size_t i = 1; i <= n; i++) {
    if (path[i] != '/' && path[i] != '\0') continue;
    snprintf(partial, sizeof partial, "%.*s", (int)i, path);
    if (mkdir(partial, mode) != 0 && errno != EEXIST) return -1;
  }
  return 0;
}

/* ---- the caller's environment, as a JSON object (credentials are found through it) */

static void buf_env(buf_t *b) {
  buf_str(b, "{");
  int first = 1;
  for (char **e = environ; *e; e++) {
    char *eq = strchr(*e, '=');
    if (!eq || eq == *e) continue;
    if (!first) buf_str(b, ",");
    first = 0;
    *eq = '\0';
    buf_json(b, *e);
    *eq = '=';
    buf_str(b, ":");
    buf_json(b, eq + 1);
  }
  buf_str(b, "}");
}

/* One line from the standby into `in` (0-terminated, without the newline), what follows it kept; -1 at its end. */
static int read_line(int sock, buf_t *in, char **line, size_t *used) {
  if (*used) {
    memmove(in->data, in->data + *used, in->len - *used);
    in->len -= *used;
    *used = 0;
  }
  char *nl;
  while (!(nl = in->len ? memchr(in->data, '\n', in->len) : NULL)) {
    buf_grow(in, 4096);
    ssize_t got = read(sock, in->data + in->len, 4096);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    in->len += (size_t)got;
  }
  *nl = '\0';
  *line = in->data;
  *used = (size_t)(nl - in->data) + 1;
  return 0;
}

/*
 * Ends a request (`logFile`, and the caller's `cwd` for a run), sends it, and
 * reads the standby's first line into `in`: `accepted`, or else (another caller
 * took this standby, or it went away) the Node CLI does it all instead.
 */
static void send_request(int sock, buf_t *req, const char *store, const char *cwd, buf_t *in, size_t *used) {
  char log[PATH_MAX + 32];
  snprintf(log, sizeof log, "%s/mount-daemon.log", strcmp(store, "/") ? store : "");
  buf_str(req, ",\"logFile\":");
  buf_json(req, log);
  if (cwd) {
    buf_str(req, ",\"cwd\":");
    buf_json(req, cwd);
  }
  buf_str(req, "}\n");
  signal(SIGPIPE, SIG_IGN);
  char *line;
  if (write_all(sock, req->data, req->len) != 0 || read_line(sock, in, &line, used) != 0 || strcmp(line, "{\"kind\":\"accepted\"}") != 0) {
    close(sock);
    exec_node();
  }
}

static int hand_mount_over(int sock, const mount_t *m, const char *store, const char *mountpoint, const char *standby_pid) {
  buf_t req = {0};
  buf_str(&req, "{\"store\":");
  buf_json(&req, store);
  buf_str(&req, ",\"ref\":");
  buf_json(&req, m->ref);
  buf_str(&req, ",\"mountpoint\":");
  buf_json(&req, mountpoint);
  char options[256];
  snprintf(options, sizeof options, ",\"options\":{\"registry\":%s,\"deadlineMs\":%llu,\"cacheBytes\":%d,\"prefetch\":%s,\"prefetchDelayMs\":1000%s},\"env\":",
           m->insecure ? "{\"insecure\":true}" : "{}", m->deadline ? strtoull(m->deadline, NULL, 10) : 30000ULL, 64 << 20, m->prefetch ? "true" : "false",
           m->remote_index ? "" : ",\"remoteIndex\":false");
  buf_str(&req, options);
  buf_env(&req);
  buf_t in = {0};
  char *line;
  size_t used = 0;
  send_request(sock, &req, store, NULL, &in, &used);
  /* Accepted: its failure is the mount's. The standby answers within its own bounds (the CLI's is 120 s). */
  char code[64] = "UNAVAILABLE", message[8192] = "mount daemon closed its channel before it was ready";
  if (read_line(sock, &in, &line, &used) == 0) {
    if (strstr(line, "\"kind\":\"ready\"")) {
      char driver[32] = "fuse";
      json_string_after(line, "\"driver\":\"", driver, sizeof driver);
      const char *pid = strstr(line, "\"pid\":");
      if (getenv("LAZYROOT_DEBUG")) fprintf(stderr, "lazyroot: mount handed to the warm standby (pid %s)\n", standby_pid);
      if (m->json) {
        buf_t out = {0};
        buf_str(&out, "{\"mountpoint\":");
        buf_json(&out, mountpoint);
        if (pid) {
          char number[32];
          snprintf(number, sizeof number, ",\"pid\":%d", atoi(pid + 6));
          buf_str(&out, number);
        }
        buf_str(&out, ",\"driver\":");
        buf_json(&out, driver);
        buf_str(&out, "}\n");
        write_all(1, out.data, out.len);
      } else if (!m->quiet) {
        if (!strcmp(driver, "overlay")) printf("mounted %s at %s (kernel overlayfs: every layer is in the store; unmount with: lazyroot umount %s)\n", m->ref, mountpoint, m->dir);
        else printf("mounted %s at %s (lazy FUSE mount, daemon pid %d; unmount with: lazyroot umount %s)\n", m->ref, mountpoint, pid ? atoi(pid + 6) : 0, m->dir);
      }
      return 0;
    }
    json_string_after(line, "\"code\":\"", code, sizeof code);
    json_string_after(line, "\"message\":\"", message, sizeof message);
  }
  if (m->json) {
    buf_t out = {0};
    buf_str(&out, "{\"error\":{\"code\":");
    buf_json(&out, code);
    buf_str(&out, ",\"message\":");
    buf_json(&out, message);
    buf_str(&out, "}}\n");
    write_all(1, out.data, out.len);
  }
  fprintf(stderr, "lazyroot: %s\n", message);
  return !strcmp(code, "INVALID_ARGUMENT") || !strcmp(code, "INVALID_REFERENCE") ? 2 : 1;
}

int main(int argc, char **argv) {
  saved_argv = argv;
  trace("cli: started");
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    fputs("lazyroot: cannot find its own executable (/proc/self/exe)\n", stderr);
    return 1;
  }
  exe[n] = '\0';
  snprintf(root, sizeof root, "%s", exe);
  for (int up = 0; up < 3; up++) {
    char *slash = strrchr(root, '/');
    if (!slash) break;
    *slash = '\0';
  }

  const char *handoff = getenv("LAZYROOT_HANDOFF");
  const char *standby = getenv("LAZYROOT_STANDBY");
  if ((handoff && !strcmp(handoff, "0")) || (standby && !strcmp(standby, "0"))) exec_node();
  run_t run;
  mount_t mnt;
  /* A run relays its stdio as pipes: never with a terminal on them. */
  int is_run = parse_run(argc, argv, &run) && !isatty(0) && !isatty(1) && !isatty(2);
  int is_mount = !is_run && parse_mount(argc, argv, &mnt);
  if (!is_run && !is_mount) exec_node();

  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) exec_node();
  const char *store_arg = (is_run ? run.store : mnt.store) ? (is_run ? run.store : mnt.store) : getenv("LAZYROOT_STORE") ? getenv("LAZYROOT_STORE") : "/var/lib/lazyroot";
  char store[PATH_MAX];
  resolve_path(cwd, store_arg, store, sizeof store);
  char mountpoint[PATH_MAX];
  /* What cannot be made or resolved here, the CLI reports. */
  if (is_mount && (mkdir_p(store, 0711) != 0 || canonical_mountpoint(cwd, mnt.dir, mountpoint, sizeof mountpoint, 0) != 0)) exec_node();

  char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  if (standby_socket(sock_path, sizeof sock_path) != 0) exec_node();
  /* Its pid, for LAZYROOT_DEBUG as the Node front end reports it: the pid file beside the socket,
     read before connecting (a standby removes it once it has a caller). */
  char standby_pid[32] = "?";
  if (getenv("LAZYROOT_DEBUG")) {
    char pid_path[sizeof sock_path + 8];
    snprintf(pid_path, sizeof pid_path, "%.*s.pid", (int)(strlen(sock_path) - 5), sock_path);
    FILE *f = fopen(pid_path, "r");
    if (f) {
      if (!fgets(standby_pid, sizeof standby_pid, f)) snprintf(standby_pid, sizeof standby_pid, "?");
      fclose(f);
    }
    standby_pid[strcspn(standby_pid, "\n")] = '\0';
  }
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  memcpy(addr.sun_path, sock_path, strlen(sock_path) + 1);
  if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) exec_node();
  if (is_mount) return hand_mount_over(sock, &mnt, store, mountpoint, standby_pid);

  buf_t req = {0};
  buf_str(&req, "{\"kind\":\"run\",\"store\":");
  buf_json(&req, store);
  buf_str(&req, ",\"ref\":");
  buf_json(&req, run.ref);
  buf_str(&req, ",\"args\":[");
  for (int i = 0; i < run.nargs; i++) {
    if (i) buf_str(&req, ",");
    buf_json(&req, run.args[i]);
  }
  buf_str(&req, "]");
  if (run.insecure) buf_str(&req, ",\"insecure\":true");
  if (run.deadline) {
    char number[32];
    snprintf(number, sizeof number, ",\"deadlineMs\":%llu", strtoull(run.deadline, NULL, 10));
    buf_str(&req, number);
  }
  if (!run.remote_index) buf_str(&req, ",\"remoteIndex\":false");
  buf_str(&req, ",\"env\":");
  buf_env(&req);
  buf_t in = {0};
  size_t used = 0;
  send_request(sock, &req, store, cwd, &in, &used);
  if (getenv("LAZYROOT_DEBUG")) fprintf(stderr, "lazyroot: run handed to the warm standby (pid %s)\n", standby_pid);
  memmove(in.data, in.data + used, in.len - used);
  in.len -= used;
  return relay(sock, &in);
}
