//! A writer for "newc" cpio archives (magic `070701`), the format the Linux
//! kernel unpacks as an initramfs. Written here so building the guest needs
//! no cpio tool; all timestamps are 0 so the archive is reproducible.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        // ino 0 is left unused: tools treat it as "no inode".
        CpioWriter { out, next_ino: 1, written: 0 }
    }

    /// A directory. Parents must come before children: the kernel does not
    /// create missing parents.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, 0, 0, &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, 0, 0, data)
    }

    /// A symbolic link: newc stores the target as the entry's data.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, major, minor, &[])
    }

    /// Writes the trailer and pads the archive to 512 bytes, as cpio(1) does;
    /// the kernel skips zero padding between concatenated archives.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, 1, 0, 0, 0)?;
        let pad = (512 - self.written % 512) % 512;
        self.write(&vec![0; pad as usize])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rmajor: u32, rminor: u32, data: &[u8]) -> io::Result<()> {
        // Archive names are relative to the root the kernel unpacks into.
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.len() >= 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad cpio path {path:?}")));
        }
        let size = u32::try_from(data.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: over 4 GiB")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, mode, nlink, size, rmajor, rminor)?;
        self.write(data)?;
        self.pad4()
    }

    #[allow(clippy::too_many_arguments)]
    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32, rmajor: u32, rminor: u32) -> io::Result<()> {
        let namesize = name.len() as u32 + 1; // with its NUL
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0];
        let mut h = String::with_capacity(HEADER_LEN);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        debug_assert_eq!(h.len(), HEADER_LEN);
        self.write(h.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad4()
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..pad as usize])
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, nlink, rdev major, rdev minor, data) for each entry, up
    /// to and including the trailer; checks alignment on the way.
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, u32, u32, Vec<u8>)> {
        let total = a.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - a.len()) % 4, 0, "entry not 4-aligned");
            assert_eq!(&a[..6], b"070701");
            let field = |i: usize| u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, nlink, size, rmaj, rmin, namesize) = (field(1), field(4), field(6), field(9), field(10), field(11));
            let name_end = HEADER_LEN + namesize as usize;
            assert_eq!(a[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(a[HEADER_LEN..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            let data = a[data_start..data_start + size as usize].to_vec();
            a = &a[(data_start + size as usize).next_multiple_of(4)..];
            let done = name == TRAILER;
            out.push((name, mode, nlink, rmaj, rmin, data));
            if done {
                assert!(a.iter().all(|&b| b == 0), "junk after the trailer");
                return out;
            }
        }
    }

    #[test]
    fn writes_newc_entries_the_kernel_can_read() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        let a = w.finish().unwrap();
        assert_eq!(a.len() % 512, 0);
        // The first header, byte for byte: ino 1, mode 040755, nlink 2, name "bin".
        let first = concat!(
            "070701", "00000001", "000041ED", "00000000", "00000000", "00000002", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000",
            "00000004", "00000000", "bin\0"
        );
        assert_eq!(&a[..HEADER_LEN + 4], first.as_bytes());
        let e = parse(&a);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "dev/console", TRAILER]);
        assert_eq!((e[1].1, e[1].5.as_slice()), (0o100755, &b"hello"[..]));
        assert_eq!((e[2].1, e[2].5.as_slice()), (0o120777, &b"busybox"[..]));
        assert_eq!((e[3].1, e[3].3, e[3].4), (0o020600, 5, 1));
        assert_eq!(e[0].2, 2);
    }

    #[test]
    fn rejects_empty_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
    }
}
