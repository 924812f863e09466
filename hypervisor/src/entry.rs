//! The bare-metal entry, where the layers meet: the boot crate's assembly
//! calls `vmsync_main`; the architecture sets the machine up, the node runs
//! the device's life, and the architecture powers off or resets when the
//! node stops.
use crate::arch::aarch64::{boot, power};
use crate::node::Stop;

#[no_mangle]
pub extern "C" fn vmsync_main(dtb: usize) -> ! {
    let (arch, info) = boot::set_up(dtb);
    match crate::node::boot::start(arch, info) {
        Stop::PowerOff => power::system_off(),
        Stop::Reset => power::system_reset(),
    }
}
