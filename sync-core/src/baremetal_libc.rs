//! The C library functions zstd calls on bare metal, over Rust's global
//! allocator. Built only for `target_os = "none"`: hosted builds use libc.
//!
//! zstd (built without the dictionary builder and legacy decoders) needs
//! only `malloc`, `calloc` and `free` from us; `memcpy`, `memmove`, `memset`
//! and `memcmp` come from Rust's compiler_builtins. C's `free` gets no size,
//! and Rust's `dealloc` needs the layout, so each block carries a header
//! holding its total size. Nothing else in the final binary may define
//! these symbols.

use core::alloc::Layout;
use core::ffi::c_void;

/// Header before each block: its size, padded to C's `max_align_t` (16 on
/// aarch64 and x86_64) so the pointer handed to C keeps that alignment.
const HEADER: usize = 16;
const ALIGN: usize = 16;

fn layout_for(size: usize) -> Option<Layout> {
    let total = size.checked_add(HEADER)?;
    Layout::from_size_align(total, ALIGN).ok()
}

/// # Safety
/// C's contract: the result is null or a block of `size` bytes for `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    // SAFETY: the layout is non-zero sized (HEADER > 0); alloc_with writes
    // the header inside the block it just allocated.
    unsafe { alloc_with(size, |l| alloc::alloc::alloc(l)) }
}

/// # Safety
/// C's contract: the result is null or `nmemb * size` zeroed bytes for `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    let Some(bytes) = nmemb.checked_mul(size) else {
        return core::ptr::null_mut();
    };
    // SAFETY: as in malloc; alloc_zeroed returns zeroed memory.
    unsafe { alloc_with(bytes, |l| alloc::alloc::alloc_zeroed(l)) }
}

/// # Safety
/// `ptr` is null or was returned by this module's `malloc`/`calloc` and not
/// freed since.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: ptr came from alloc_with, so HEADER bytes before it is the
    // block's start, holding the size it was allocated with; that size gave
    // a valid layout then, so it does now.
    unsafe {
        let base = (ptr as *mut u8).sub(HEADER);
        let size = (base as *const usize).read();
        let layout = Layout::from_size_align_unchecked(size + HEADER, ALIGN);
        alloc::alloc::dealloc(base, layout);
    }
}

/// # Safety
/// `alloc` must behave as `GlobalAlloc::alloc` for the layout it is given.
unsafe fn alloc_with(size: usize, alloc: impl FnOnce(Layout) -> *mut u8) -> *mut c_void {
    let Some(layout) = layout_for(size) else {
        return core::ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size (HEADER > 0).
    let base = alloc(layout);
    if base.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: base is a fresh block of size + HEADER bytes aligned to 16:
    // the header fits at its start and base + HEADER is still inside it.
    unsafe {
        (base as *mut usize).write(size);
        base.add(HEADER) as *mut c_void
    }
}
