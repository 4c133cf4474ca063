{
  "targets": [
    {
      "target_name": "lazyroot_native",
      "sources": ["native/lazyroot_native.c", "native/gzip_index.c", "native/gzip_member.c", "native/gzip_window.c", "native/fuse_times.c", "native/mount_calls.c", "native/spawn.c"],
      "libraries": ["-ldl", "-lpthread"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    },
    {
      "target_name": "lazyroot-front",
      "type": "executable",
      "sources": ["native/front.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
