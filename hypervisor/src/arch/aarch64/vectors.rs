//! The EL2 exception vector table and the guest register frame.
//!
//! Every exception saves the guest's general registers and FP/SIMD state on
//! the EL2 stack (the hypervisor's Rust code uses FP/SIMD too), calls
//! `vmsync_trap(kind, frame)` and restores the frame, possibly changed, on
//! the way back to the guest.

/// The guest's registers as saved on exception entry.
#[repr(C)]
#[derive(Clone)]
pub struct TrapFrame {
    pub x: [u64; 31],
    _pad: u64,
    pub q: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}

pub const FRAME_SIZE: usize = 784;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == FRAME_SIZE);

impl TrapFrame {
    pub const fn zeroed() -> Self {
        TrapFrame { x: [0; 31], _pad: 0, q: [0; 32], fpcr: 0, fpsr: 0 }
    }

    /// Register `n` as an instruction operand sees it: 31 is the zero register.
    pub fn reg(&self, n: u8) -> u64 {
        if n >= 31 {
            0
        } else {
            self.x[n as usize]
        }
    }

    pub fn set_reg(&mut self, n: u8, v: u64) {
        if n < 31 {
            self.x[n as usize] = v;
        }
    }
}

/// Which vector was taken: `group * 4 + type`, groups in table order
/// (current EL SP0, current EL SPx, lower EL AArch64, lower EL AArch32) and
/// types sync, IRQ, FIQ, SError.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    CurrentSync,
    CurrentOther(u64),
    LowerSync,
    LowerIrq,
    LowerFiq,
    LowerSError,
    Aarch32(u64),
}

impl VectorKind {
    pub fn from_index(i: u64) -> Self {
        match i {
            0 | 4 => VectorKind::CurrentSync,
            1..=3 | 5..=7 => VectorKind::CurrentOther(i),
            8 => VectorKind::LowerSync,
            9 => VectorKind::LowerIrq,
            10 => VectorKind::LowerFiq,
            11 => VectorKind::LowerSError,
            _ => VectorKind::Aarch32(i),
        }
    }
}

core::arch::global_asm!(
    r#"
.macro VENTRY kind
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp]
    mov     x0, #\kind
    b       vmsync_trap_common
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global __el2_vectors
__el2_vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY 4
    VENTRY 5
    VENTRY 6
    VENTRY 7
    VENTRY 8
    VENTRY 9
    VENTRY 10
    VENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15

vmsync_trap_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    add     x1, sp, #256
    stp     q0, q1, [x1, #0]
    stp     q2, q3, [x1, #32]
    stp     q4, q5, [x1, #64]
    stp     q6, q7, [x1, #96]
    stp     q8, q9, [x1, #128]
    stp     q10, q11, [x1, #160]
    stp     q12, q13, [x1, #192]
    stp     q14, q15, [x1, #224]
    stp     q16, q17, [x1, #256]
    stp     q18, q19, [x1, #288]
    stp     q20, q21, [x1, #320]
    stp     q22, q23, [x1, #352]
    stp     q24, q25, [x1, #384]
    stp     q26, q27, [x1, #416]
    stp     q28, q29, [x1, #448]
    stp     q30, q31, [x1, #480]
    mrs     x2, fpcr
    mrs     x3, fpsr
    add     x4, x1, #512
    stp     x2, x3, [x4]
    mov     x1, sp
    bl      vmsync_trap
    .global vmsync_trap_return
vmsync_trap_return:
    add     x1, sp, #256
    add     x4, x1, #512
    ldp     x2, x3, [x4]
    msr     fpcr, x2
    msr     fpsr, x3
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    ldp     x0, x1, [sp]
    add     sp, sp, #{frame}
    eret

    // vmsync_enter_guest(frame: *const TrapFrame) -> !
    // Copies the frame to the top of the EL2 stack (every later trap starts
    // from an empty stack) and leaves through the common return path; the
    // caller has set ELR_EL2 and SPSR_EL2.
    .global vmsync_enter_guest
vmsync_enter_guest:
    ldr     x1, =__stack_top
    sub     x1, x1, #{frame}
    mov     sp, x1
    mov     x2, #0
1:  ldr     x3, [x0, x2]
    str     x3, [x1, x2]
    add     x2, x2, #8
    cmp     x2, #{frame}
    b.lo    1b
    b       vmsync_trap_return
    .ltorg
"#,
    frame = const FRAME_SIZE,
);

extern "C" {
    pub fn vmsync_enter_guest(frame: *const TrapFrame) -> !;
}
