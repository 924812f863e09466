//! What a dynamically linked arm64 program needs to run: its interpreter
//! (`PT_INTERP`) and the closure of its `DT_NEEDED` libraries, looked up in
//! an unpacked Debian root. A library missing from the unpacked packages is
//! an error here, at build time, instead of "not found" in the guest.

use anyhow::{bail, Context, Result};
use object::read::elf::{Dyn, ElfFile64, ProgramHeader};
use object::{elf, Endianness};
use std::path::{Path, PathBuf};

/// Where Debian's arm64 loader looks without an `ld.so.cache` (its built-in
/// multiarch directories), relative to the root.
pub const LIB_DIRS: [&str; 2] = ["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"];

/// The interpreter path and the `DT_NEEDED` names of one ELF file.
pub fn dynamic_deps(bytes: &[u8]) -> Result<(Option<String>, Vec<String>)> {
    let file = ElfFile64::<Endianness>::parse(bytes).context("not a 64-bit ELF file")?;
    let endian = file.endian();
    let mut interp = None;
    for ph in file.elf_program_headers() {
        if let Some(i) = ph.interpreter(endian, bytes)? {
            interp = Some(String::from_utf8_lossy(i).into_owned());
        }
    }
    let sections = file.elf_section_table();
    let mut needed = Vec::new();
    if let Some((dynamic, link)) = sections.dynamic(endian, bytes)? {
        let strings = sections.strings(endian, bytes, link)?;
        for d in dynamic {
            if d.tag32(endian) == Some(elf::DT_NEEDED) {
                needed.push(String::from_utf8_lossy(d.string(endian, strings)?).into_owned());
            }
        }
    }
    Ok((interp, needed))
}

/// Every library that `programs` (paths relative to `root`) need, directly
/// or through other libraries, plus `extra` sonames: each as the path
/// relative to `root` where the loader will find it, sorted.
pub fn library_closure(root: &Path, programs: &[&str], extra: &[&str]) -> Result<Vec<PathBuf>> {
    let mut todo: Vec<(String, String)> = Vec::new(); // (soname, who needs it)
    for p in programs {
        let bytes = std::fs::read(root.join(p)).with_context(|| format!("reading {}", root.join(p).display()))?;
        let (_, needed) = dynamic_deps(&bytes).with_context(|| format!("reading the dynamic section of {p}"))?;
        todo.extend(needed.into_iter().map(|n| (n, p.to_string())));
    }
    todo.extend(extra.iter().map(|n| (n.to_string(), "the guest's libc (loaded at run time)".to_string())));
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    while let Some((soname, by)) = todo.pop() {
        if found.iter().any(|(s, _)| *s == soname) {
            continue;
        }
        let Some(rel) = LIB_DIRS.iter().map(|d| Path::new(d).join(&soname)).find(|r| root.join(r).exists()) else {
            bail!("{by} needs {soname}, which no unpacked package provides (add its package to the study's list)");
        };
        let bytes = std::fs::read(root.join(&rel)).with_context(|| format!("reading {}", root.join(&rel).display()))?;
        let (_, needed) = dynamic_deps(&bytes).with_context(|| format!("reading the dynamic section of {soname}"))?;
        todo.extend(needed.into_iter().map(|n| (n, soname.clone())));
        found.push((soname, rel));
    }
    let mut libs: Vec<PathBuf> = found.into_iter().map(|(_, r)| r).collect();
    libs.sort();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own programs are dynamically linked ELF files too.
    #[test]
    fn reads_the_interpreter_and_needed_libraries_of_a_host_program() {
        let sh = std::fs::read("/bin/sh").unwrap();
        let (interp, needed) = dynamic_deps(&sh).unwrap();
        assert!(interp.is_some_and(|i| i.contains("ld-linux")), "no interpreter");
        assert!(needed.iter().any(|n| n.starts_with("libc.so")), "{needed:?}");
        assert!(dynamic_deps(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn a_missing_library_names_who_needs_it() {
        let root = std::env::temp_dir().join(format!("vmsync-elf-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::copy("/bin/sh", root.join("usr/bin/sh")).unwrap();
        let e = library_closure(&root, &["usr/bin/sh"], &[]).unwrap_err().to_string();
        assert!(e.contains("usr/bin/sh needs libc.so"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
