//! The Rust half of a fresh machine: every target and component that
//! `rust-toolchain.toml` lists, installed through rustup before the first
//! build that needs them. rustup does not do it by itself here: with
//! `RUSTUP_AUTO_INSTALL=0`, or a toolchain that is a link to another, the
//! file's lists are never completed, and the first bare-metal build stops at
//! "can't find crate for `core`". The decisions (what the file asks for,
//! what is missing) are plain functions with tests; `ensure` touches the
//! machine.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::OnceLock;

use crate::apt::find_in_path;
use crate::image::workspace_root;

/// What `rust-toolchain.toml` asks for beyond the toolchain itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

/// The `targets` and `components` arrays of the `[toolchain]` table. A small
/// reader of the subset the file uses (string arrays, one or many lines,
/// comments), so that xtask needs no TOML crate for one file.
pub fn parse_toolchain_file(text: &str) -> Result<Wanted, String> {
    let mut wanted = Wanted::default();
    let mut in_toolchain = false;
    let mut lines = text.lines().map(strip_comment);
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with('[') {
            in_toolchain = line == "[toolchain]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let list = match key.trim() {
            "targets" if in_toolchain => &mut wanted.targets,
            "components" if in_toolchain => &mut wanted.components,
            _ => continue,
        };
        let mut value = value.trim().to_string();
        if !value.starts_with('[') {
            return Err(format!("`{}` must be an array of strings", key.trim()));
        }
        while !value.contains(']') {
            let next = lines.next().ok_or_else(|| format!("`{}`: the array is not closed", key.trim()))?;
            value.push_str(next);
        }
        let inner = &value[1..value.find(']').unwrap_or(value.len())];
        for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let name = item.strip_prefix('"').and_then(|s| s.strip_suffix('"')).ok_or_else(|| format!("`{}`: {item} is not a quoted string", key.trim()))?;
            list.push(name.to_string());
        }
    }
    Ok(wanted)
}

fn strip_comment(line: &str) -> &str {
    // The file's strings hold no '#'.
    line.split_once('#').map_or(line, |(before, _)| before)
}

/// rustup's name for a component, without the `-preview` that some were
/// once called by and without a host-target suffix.
fn component_base<'a>(name: &'a str, host: &str) -> &'a str {
    let name = name.strip_suffix(host).and_then(|n| n.strip_suffix('-')).unwrap_or(name);
    name.strip_suffix("-preview").unwrap_or(name)
}

/// The wanted targets and components that the installed lists (as
/// `rustup target list --installed` and `rustup component list --installed`
/// print them) lack, in the file's order.
pub fn missing(wanted: &Wanted, installed_targets: &[&str], installed_components: &[&str], host: &str) -> Wanted {
    let targets = wanted.targets.iter().filter(|t| !installed_targets.contains(&t.as_str()) && t.as_str() != host).cloned().collect();
    let components = wanted
        .components
        .iter()
        .filter(|c| {
            let want = component_base(c, host);
            !installed_components.iter().any(|i| component_base(i, host) == want)
        })
        .cloned()
        .collect();
    Wanted { targets, components }
}

/// Installs what `rust-toolchain.toml` lists and the toolchain in use lacks;
/// checks once per run.
pub fn ensure() -> Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let path = workspace_root().join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let wanted = parse_toolchain_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if wanted.targets.is_empty() && wanted.components.is_empty() {
        let _ = DONE.set(());
        return Ok(());
    }
    if find_in_path("rustup").is_none() {
        bail!(
            "rustup is not on PATH: the build needs the Rust targets {} from it; install rustup (https://rustup.rs, or Debian's `rustup` package) and run this again",
            wanted.targets.join(", ")
        );
    }
    let toolchain = active_toolchain()?;
    let host = host_triple()?;
    let targets = rustup_lines(&toolchain, &["target", "list", "--installed"])?;
    let components = rustup_lines(&toolchain, &["component", "list", "--installed"])?;
    let lack = missing(&wanted, &refs(&targets), &refs(&components), &host);
    if !lack.targets.is_empty() || !lack.components.is_empty() {
        let what: Vec<&str> = lack.targets.iter().chain(&lack.components).map(String::as_str).collect();
        println!("xtask: installing Rust {} for toolchain {toolchain} (rust-toolchain.toml lists them)", what.join(" "));
        if !lack.targets.is_empty() {
            rustup(&toolchain, &["target", "add"], &lack.targets)?;
        }
        if !lack.components.is_empty() {
            rustup(&toolchain, &["component", "add"], &lack.components)?;
        }
    }
    let _ = DONE.set(());
    Ok(())
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The toolchain cargo runs under: rustup's proxy sets `RUSTUP_TOOLCHAIN` for
/// the processes it starts (cargo, and so xtask); otherwise ask rustup.
fn active_toolchain() -> Result<String> {
    if let Ok(t) = std::env::var("RUSTUP_TOOLCHAIN") {
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let out = Command::new("rustup").args(["show", "active-toolchain"]).current_dir(workspace_root()).output().context("starting rustup")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(t) if out.status.success() => Ok(t.to_string()),
        _ => bail!("`rustup show active-toolchain` failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
    }
}

fn host_triple() -> Result<String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())).arg("-vV").output().context("starting rustc")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .context("`rustc -vV` printed no host line")
}

fn rustup_lines(toolchain: &str, args: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("rustup").arg(format!("+{toolchain}")).args(args).output().context("starting rustup")?;
    if !out.status.success() {
        bail!("`rustup +{toolchain} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

fn rustup(toolchain: &str, verb: &[&str], names: &[String]) -> Result<()> {
    let status = Command::new("rustup").args(verb).args(["--toolchain", toolchain]).args(names).status().context("starting rustup")?;
    if !status.success() {
        bail!("`rustup {} --toolchain {toolchain} {}` failed ({status}); run it by hand to see why", verb.join(" "), names.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "x86_64-unknown-linux-gnu";

    fn wanted(targets: &[&str], components: &[&str]) -> Wanted {
        Wanted { targets: targets.iter().map(|s| s.to_string()).collect(), components: components.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn reads_the_projects_own_file() {
        let text = std::fs::read_to_string(workspace_root().join("rust-toolchain.toml")).unwrap();
        let w = parse_toolchain_file(&text).unwrap();
        assert!(w.targets.iter().any(|t| t == "aarch64-unknown-none"), "{w:?}");
        assert!(w.components.iter().any(|c| c == "rust-src"), "{w:?}");
    }

    #[test]
    fn reads_multi_line_arrays_and_skips_other_tables() {
        let text = "[other]\ntargets = [\"no\"]\n[toolchain]\nchannel = \"1.95.0\" # pinned\ntargets = [\n  \"a\", # first\n  \"b\",\n]\ncomponents = []\n";
        assert_eq!(parse_toolchain_file(text).unwrap(), wanted(&["a", "b"], &[]));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(parse_toolchain_file("[toolchain]\ntargets = \"a\"\n").unwrap_err().contains("array"));
        assert!(parse_toolchain_file("[toolchain]\ntargets = [\"a\",\n").unwrap_err().contains("not closed"));
        assert!(parse_toolchain_file("[toolchain]\ntargets = [a]\n").unwrap_err().contains("quoted"));
    }

    #[test]
    fn a_fresh_toolchain_lacks_everything_but_the_host() {
        let w = wanted(&["aarch64-unknown-none", HOST], &["rust-src", "llvm-tools"]);
        let m = missing(&w, &[HOST], &["cargo-x86_64-unknown-linux-gnu", "rustc-x86_64-unknown-linux-gnu"], HOST);
        assert_eq!(m, wanted(&["aarch64-unknown-none"], &["rust-src", "llvm-tools"]));
    }

    #[test]
    fn installed_components_match_with_host_suffix_or_old_preview_name() {
        let w = wanted(&["aarch64-unknown-none"], &["rust-src", "llvm-tools-preview"]);
        let m = missing(&w, &["aarch64-unknown-none", HOST], &["rust-src", "llvm-tools-x86_64-unknown-linux-gnu"], HOST);
        assert_eq!(m, Wanted::default());
    }
}
