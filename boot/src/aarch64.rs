//! EL2 entry on aarch64: the Linux `Image` header, then the first
//! instructions. Loaders (QEMU `-kernel`, U-Boot `booti`) enter at the
//! header's first word at EL2 with the MMU off and the device tree's
//! physical address in x0.
//!
//! The header's `image_size` is written by the linker script as the span up
//! to the end of BSS; `cargo xtask build` rewrites it to cover the payload.
//! `text_offset` is 2 MiB so that QEMU (which keeps the first 2 MiB of RAM
//! for its boot stub) and U-Boot place us at the same address, the one we
//! are linked at.
//!
//! The entry code needs the symbols `__stack_top`, `__bss_start`,
//! `__bss_end`, `__image_size` and `__el2_vectors` from the linker script
//! and the vector table, and calls `vmsync_main(dtb: usize) -> !`.

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _head
_head:
    b       1f                      // code0: branch to the real entry
    .long   0                       // code1
    .quad   0x200000                // text_offset
    .quad   __image_size            // image_size (patched by xtask)
    .quad   0x2                     // flags: little-endian, 4 KiB pages
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5 (no PE header)
1:
    mov     x19, x0                 // keep the device tree pointer
    msr     daifset, #0xf
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    .Lnot_el2
    ldr     x1, =__stack_top
    mov     sp, x1
    // Rust code on aarch64-unknown-none uses FP/SIMD: stop EL2 trapping it
    // (CPTR_EL2 with only its RES1 bits set).
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    isb
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:  ldr     x1, =__el2_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      vmsync_main
.Lnot_el2:
    // Not entered at EL2: nothing we can do without virtualization; park.
    wfe
    b       .Lnot_el2
    .ltorg
"#
);
