/* Declaration-only <stdlib.h> for bare-metal C (zstd). malloc, calloc and
 * free are defined in Rust: sync-core/src/baremetal_libc.rs. */
#ifndef VMSYNC_STDLIB_H
#define VMSYNC_STDLIB_H
#include <stddef.h>
void *malloc(size_t size);
void *calloc(size_t nmemb, size_t size);
void free(void *ptr);
#endif
