/* Declaration-only <assert.h> for bare-metal C: assertions compile away
 * (zstd is built with DEBUGLEVEL 0, where it does not assert anyway). */
#ifndef VMSYNC_ASSERT_H
#define VMSYNC_ASSERT_H
#define assert(expr) ((void)0)
#endif
