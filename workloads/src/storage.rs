//! App-storage stand-in: a record log that grows by appends and a small
//! database file whose fixed-size records are updated in place, both in files
//! (on the guest's tmpfs, so the page cache is guest memory).

use crate::{rand2, Checksum};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const DEFAULT_DIR: &str = "/tmp/vmsync-storage";
pub const TICKS_PER_SECOND: u64 = 10;
const RECORD: usize = 128;
const DB_RECORDS: u64 = 8192; // 1 MiB
const APPENDS_PER_TICK: u64 = 4;
const UPDATES_PER_TICK: u64 = 8;
/// The log starts over past this size, as an app's journal would be rotated.
const LOG_LIMIT: u64 = 4 << 20;

pub struct Storage {
    db: File,
    log: File,
    log_len: u64,
    ticks: u64,
    dir: PathBuf,
}

fn record(seed: u64, n: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    for (k, chunk) in r.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&rand2(seed, n.wrapping_mul(16).wrapping_add(k as u64)).to_le_bytes());
    }
    r
}

impl Storage {
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let open = |name: &str| OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join(name));
        let mut db = open("db.dat")?;
        for i in 0..DB_RECORDS {
            db.write_all(&record(2, i))?;
        }
        let log = open("log.dat")?;
        Ok(Storage { db, log, log_len: 0, ticks: 0, dir: dir.to_path_buf() })
    }

    pub fn tick(&mut self) -> io::Result<()> {
        self.ticks += 1;
        let t = self.ticks;
        if self.log_len >= LOG_LIMIT {
            self.log.set_len(0)?;
            self.log_len = 0;
        }
        self.log.seek(SeekFrom::Start(self.log_len))?;
        for j in 0..APPENDS_PER_TICK {
            self.log.write_all(&record(3, t * APPENDS_PER_TICK + j))?;
            self.log_len += RECORD as u64;
        }
        for j in 0..UPDATES_PER_TICK {
            let r = rand2(t, j);
            self.db.seek(SeekFrom::Start((r % DB_RECORDS) * RECORD as u64))?;
            self.db.write_all(&record(4, r))?;
        }
        Ok(())
    }

    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads both files back, so the checksum covers what the files hold.
    pub fn checksum(&mut self) -> io::Result<u64> {
        let mut c = Checksum::default();
        for f in [&mut self.db, &mut self.log] {
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(0))?;
            f.read_to_end(&mut buf)?;
            c.bytes(&buf);
            c.word(buf.len() as u64);
        }
        Ok(c.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_ticks_same_checksum() {
        let base = std::env::temp_dir().join(format!("vmsync-storage-test-{}", std::process::id()));
        let mut a = Storage::create(&base.join("a")).unwrap();
        let mut b = Storage::create(&base.join("b")).unwrap();
        for _ in 0..5 {
            a.tick().unwrap();
            b.tick().unwrap();
        }
        assert_eq!(a.checksum().unwrap(), b.checksum().unwrap());
        b.tick().unwrap();
        assert_ne!(a.checksum().unwrap(), b.checksum().unwrap());
        std::fs::remove_dir_all(base).unwrap();
    }
}
