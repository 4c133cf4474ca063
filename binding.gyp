{
  "targets": [
    {
      "target_name": "lazyroot_native",
      "sources": ["native/lazyroot_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
