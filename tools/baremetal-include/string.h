/* Declaration-only <string.h> for bare-metal C (zstd). The definitions come
 * from Rust's compiler_builtins (memcpy, memmove, memset, memcmp, bcmp). */
#ifndef VMSYNC_STRING_H
#define VMSYNC_STRING_H
#include <stddef.h>
void *memcpy(void *restrict dest, const void *restrict src, size_t n);
void *memmove(void *dest, const void *src, size_t n);
void *memset(void *dest, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
#endif
