/* Inflating from a gzip checkpoint (gzip_index.c), shared with gzip_window.c. */
#ifndef LAZYROOT_GZIP_EXTRACT_H
#define LAZYROOT_GZIP_EXTRACT_H

#include <stddef.h>

typedef struct {
  /* inputs (borrowed from JS buffers kept alive by references) */
  double compressed_offset;
  int bits;
  const unsigned char *window;
  size_t window_len;
  const unsigned char *in;
  size_t in_len;
  double skip;
  size_t length;
  unsigned char *out;  /* `length` bytes: a JS Buffer's memory, allocated by the caller */
  /* outputs */
  const char *error_code;
  char error[256];
  double error_offset;
} extract_t;

/*
 * Inflates x->length bytes (after x->skip) from the checkpoint into x->out;
 * no N-API calls, so it may run on a worker thread. On failure sets
 * error_code, error and error_offset.
 */
void extract_run(extract_t *x);

#endif
