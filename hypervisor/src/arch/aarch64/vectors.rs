//! The EL2 exception vector table, the guest register frame, and the guest
//! enter/exit pair (KVM's shape).
//!
//! `vmsync_run_guest(frame)` saves the hypervisor's callee-saved registers
//! on the EL2 stack, loads the guest's general and FP/SIMD registers from
//! `frame` and enters the guest (ELR_EL2/SPSR_EL2 say where). An exception
//! from the guest saves its registers back into the same frame, restores
//! the hypervisor's, and returns from `vmsync_run_guest` with the vector's
//! kind: the guest's exit is an ordinary return. An exception taken by the
//! hypervisor itself is fatal (`vmsync_hyp_fault`).

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
// Stack layout of vmsync_run_guest while the guest runs (from sp up):
// x19..x30 (96 bytes), d8..d15 (64 bytes), the frame pointer (8), pad (8).
.equ HOST_SAVE, 176

.macro VENTRY_HYP kind
    .balign 0x80
    mov     x0, #\kind
    b       vmsync_hyp_fault
.endm

.macro VENTRY_GUEST kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       vmsync_guest_exit
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global __el2_vectors
__el2_vectors:
    VENTRY_HYP 0
    VENTRY_HYP 1
    VENTRY_HYP 2
    VENTRY_HYP 3
    VENTRY_HYP 4
    VENTRY_HYP 5
    VENTRY_HYP 6
    VENTRY_HYP 7
    VENTRY_GUEST 8
    VENTRY_GUEST 9
    VENTRY_GUEST 10
    VENTRY_GUEST 11
    VENTRY_GUEST 12
    VENTRY_GUEST 13
    VENTRY_GUEST 14
    VENTRY_GUEST 15

// x0 = kind; guest x0/x1 at [sp], the host save area above them.
vmsync_guest_exit:
    ldr     x1, [sp, #16 + 160]
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1]
    add     x2, x1, #256
    stp     q0, q1, [x2, #0]
    stp     q2, q3, [x2, #32]
    stp     q4, q5, [x2, #64]
    stp     q6, q7, [x2, #96]
    stp     q8, q9, [x2, #128]
    stp     q10, q11, [x2, #160]
    stp     q12, q13, [x2, #192]
    stp     q14, q15, [x2, #224]
    stp     q16, q17, [x2, #256]
    stp     q18, q19, [x2, #288]
    stp     q20, q21, [x2, #320]
    stp     q22, q23, [x2, #352]
    stp     q24, q25, [x2, #384]
    stp     q26, q27, [x2, #416]
    stp     q28, q29, [x2, #448]
    stp     q30, q31, [x2, #480]
    mrs     x3, fpcr
    mrs     x4, fpsr
    add     x2, x2, #512
    stp     x3, x4, [x2]
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #HOST_SAVE
    ret

    // u64 vmsync_run_guest(frame: *mut TrapFrame)
    .global vmsync_run_guest
vmsync_run_guest:
    sub     sp, sp, #HOST_SAVE
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    str     x0, [sp, #160]
    add     x1, x0, #256
    add     x2, x1, #512
    ldp     x3, x4, [x2]
    msr     fpcr, x3
    msr     fpsr, x4
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
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0]
    eret
"#
);

extern "C" {
    /// Runs the guest until it exits; returns the vector's kind.
    pub fn vmsync_run_guest(frame: *mut TrapFrame) -> u64;
}
