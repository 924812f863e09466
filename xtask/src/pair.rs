//! `cargo xtask pair IMAGE...`: pairs a set of devices. Makes one fresh
//! pairing secret from the OS's randomness and writes it into the guest
//! config (`secret=`) of every boot image given, in place; the rest of each
//! image is kept byte for byte. The secret is never printed or logged: it
//! lives only in the images (whoever holds an image holds it).
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use vmsync_boot::container::{self, Container};

/// Bytes of a pairing secret (the hypervisor's `secret=`: 64 hex digits).
pub const SECRET_LEN: usize = 32;

/// A pairing secret from the OS's randomness (getrandom(2), which waits
/// until the kernel's pool is seeded), as the 64 hex digits of `secret=`.
pub fn fresh_secret() -> Result<String> {
    let mut b = [0u8; SECRET_LEN];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What `pair` did to one image (no secret in it: it may be shown).
#[derive(Debug, PartialEq, Eq)]
pub struct Paired {
    pub image: PathBuf,
    /// The image held a secret before (now replaced).
    pub replaced: bool,
}

/// The command: a fresh secret into every image, then one line each.
pub fn run(images: &[PathBuf]) -> Result<()> {
    let secret = fresh_secret()?;
    for p in pair(images, &secret)? {
        let what = if p.replaced { "replaced its pairing secret" } else { "added a pairing secret" };
        println!("xtask: pair: {}: {what}", p.image.display());
    }
    println!("xtask: pair: {} images share one fresh secret (not shown; it is in the images only)", images.len());
    Ok(())
}

/// Writes `secret` (64 hex digits) into every image. All images are read
/// and checked before any is written: a bad one leaves all as they were.
pub fn pair(images: &[PathBuf], secret: &str) -> Result<Vec<Paired>> {
    ensure!(images.len() >= 2, "pairing needs at least two device images (got {})", images.len());
    ensure!(secret.len() == 2 * SECRET_LEN && secret.bytes().all(|c| c.is_ascii_hexdigit()), "a pairing secret is 64 hex digits");
    for (i, a) in images.iter().enumerate() {
        ensure!(!images[..i].contains(a), "{} is given twice", a.display());
    }
    let mut out = Vec::new();
    for path in images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (image, replaced) = with_secret(&bytes, secret).with_context(|| format!("{} is not a VMsync device image", path.display()))?;
        out.push((path, image, replaced));
    }
    out.into_iter()
        .map(|(path, image, replaced)| {
            write_atomically(path, &image)?;
            Ok(Paired { image: path.clone(), replaced })
        })
        .collect()
}

/// The image with its config's `secret=` line set to `secret`; whether it
/// had one. The hypervisor and every other payload entry stay as they are.
fn with_secret(image: &[u8], secret: &str) -> Result<(Vec<u8>, bool)> {
    vmsync_boot::image::parse(image).map_err(|e| anyhow::anyhow!("no arm64 Image header ({e:?})"))?;
    let at = payload_offset(image).context("no payload container at its end")?;
    let payload = Container::parse(&image[at..]).map_err(|e| anyhow::anyhow!("its payload does not parse ({e:?})"))?;
    let config = payload.get("config").context("its payload has no guest config")?;
    let config = std::str::from_utf8(config).context("its guest config is not text")?;
    let (config, replaced) = set_secret(config, secret)?;
    let entries: Vec<(&str, &[u8])> = payload.entries().iter().map(|e| (e.name(), if e.name() == "config" { config.as_bytes() } else { e.data })).collect();
    let packed = container::pack(&entries).map_err(|e| anyhow::anyhow!("repacking the payload: {e:?}"))?;
    let out = vmsync_boot::image::assemble(&image[..at], &packed).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((out, replaced))
}

/// Where the payload starts: the container that ends exactly at the end
/// of the file (the hypervisor itself holds the magic as a constant, which
/// parses as no container).
fn payload_offset(image: &[u8]) -> Option<usize> {
    let m = container::MAGIC;
    (0..image.len().saturating_sub(m.len() - 1))
        .filter(|&i| image[i..i + m.len()] == m)
        .find(|&i| Container::parse(&image[i..]).is_ok_and(|c| c.total_len() == (image.len() - i) as u64))
}

/// `config` with `secret=<secret>` in place of its secret line (or added);
/// only a device that syncs (`peer=` or `role=standby`) is paired.
fn set_secret(config: &str, secret: &str) -> Result<(String, bool)> {
    let key = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_string());
    let syncs = config.lines().any(|l| key(l).as_deref() == Some("peer") || l.trim() == "role=standby");
    if !syncs {
        bail!("its guest config has neither `peer=` nor `role=standby`: it syncs with no device");
    }
    let mut replaced = false;
    let mut out = String::new();
    for l in config.lines() {
        if key(l).as_deref() == Some("secret") {
            if !replaced {
                out += &format!("secret={secret}\n");
            }
            replaced = true;
        } else {
            out += l;
            out.push('\n');
        }
    }
    if !replaced {
        out += &format!("secret={secret}\n");
    }
    Ok((out, replaced))
}

/// Replaces `path` with `bytes` through a temporary file beside it, with
/// the same permissions: a crash never leaves half an image.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("pair-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    let perms = std::fs::metadata(path)?.permissions();
    std::fs::set_permissions(&tmp, perms)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal device image: an arm64 Image header as the "hypervisor"
    /// (holding the container magic, as the real one does), then a payload.
    fn image(config: &str) -> Vec<u8> {
        let mut hv = vec![0u8; 8192];
        hv[vmsync_boot::image::MAGIC_OFFSET..vmsync_boot::image::MAGIC_OFFSET + 4].copy_from_slice(&vmsync_boot::image::MAGIC);
        hv[100..108].copy_from_slice(&container::MAGIC);
        let payload = container::pack(&[("kernel", &[7u8; 5000][..]), ("config", config.as_bytes()), ("initrd", &[9u8; 300][..])]).unwrap();
        vmsync_boot::image::assemble(&hv, &payload).unwrap()
    }

    fn config_of(image: &[u8]) -> String {
        let at = payload_offset(image).unwrap();
        String::from_utf8(Container::parse(&image[at..]).unwrap().get("config").unwrap().to_vec()).unwrap()
    }

    #[test]
    fn secrets_are_fresh_hex_from_the_os() {
        let (a, b) = (fresh_secret().unwrap(), fresh_secret().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn pairs_a_set_of_images_with_one_secret_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("vmsync-pair-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = "0".repeat(64);
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        std::fs::write(&a, image(&format!("cmdline=x\nnet_ip=169.254.0.1\npeer=169.254.0.2:7000\nsecret={old}\n"))).unwrap();
        std::fs::write(&b, image("cmdline=x\nrole=standby\nnet_ip=169.254.0.2\n")).unwrap();
        let secret = fresh_secret().unwrap();
        let done = pair(&[a.clone(), b.clone()], &secret).unwrap();
        assert_eq!(done, vec![Paired { image: a.clone(), replaced: true }, Paired { image: b.clone(), replaced: false }]);
        // What may be shown holds no secret.
        assert!(!format!("{done:?}").contains(&secret));
        let (ia, ib) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(config_of(&ia), format!("cmdline=x\nnet_ip=169.254.0.1\npeer=169.254.0.2:7000\nsecret={secret}\n"));
        assert_eq!(config_of(&ib), format!("cmdline=x\nrole=standby\nnet_ip=169.254.0.2\nsecret={secret}\n"));
        // The kernel and initrd are unchanged, the header covers the file.
        let c = Container::parse(&ia[payload_offset(&ia).unwrap()..]).unwrap();
        assert_eq!(c.get("kernel").unwrap(), &[7u8; 5000][..]);
        assert_eq!(c.get("initrd").unwrap(), &[9u8; 300][..]);
        assert_eq!(vmsync_boot::image::parse(&ia).unwrap().image_size, ia.len() as u64);
        // One bad image: nothing is written.
        let solo = dir.join("solo.img");
        std::fs::write(&solo, image("cmdline=x\n")).unwrap();
        let before = std::fs::read(&a).unwrap();
        assert!(pair(&[a.clone(), solo.clone()], &fresh_secret().unwrap()).is_err());
        assert_eq!(std::fs::read(&a).unwrap(), before);
        assert!(pair(std::slice::from_ref(&a), &secret).is_err(), "one device is no pairing");
        assert!(pair(&[a.clone(), a.clone()], &secret).is_err());
        std::fs::write(&solo, b"not an image").unwrap();
        assert!(pair(&[a.clone(), solo], &secret).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
