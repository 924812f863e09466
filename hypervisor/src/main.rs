#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vmsync: the hypervisor is built for a bare-metal target; use `cargo xtask build`");
    std::process::exit(2);
}
