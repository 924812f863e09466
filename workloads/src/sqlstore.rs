//! App storage with a real database: Debian's `sqlite3` shell keeps a
//! database open in tmpfs (WAL journal, `synchronous=NORMAL`, as Android
//! opens app databases) and is fed transactions on its stdin: event inserts,
//! record updates, indexed queries, and now and then a trim of old events,
//! as an app's local store sees. Only in the study initramfs.
//!
//! Every transaction ends with a marker query, so the driver counts only
//! transactions sqlite finished. The checksum folds in every line sqlite
//! printed; the SQL is a function of the transaction number alone, so the
//! checksum is a function of the count of transactions done.

use crate::{rand2, Checksum};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub const SQLITE: &str = "/usr/bin/sqlite3";
pub const DEFAULT_DIR: &str = "/tmp/vmsync-sqlite";
/// About a third of the guest's CPU under plain QEMU (50 took two thirds),
/// leaving room for the hypervisor's overhead.
pub const TX_PER_SECOND: u64 = 25;
const ITEMS: u64 = 2000;
const OWNERS: u64 = 64;
const INSERTS_PER_TX: u64 = 4;
const UPDATES_PER_TX: u64 = 8;
/// Every TRIM_EVERY transactions, events older than EVENTS_KEPT_TX
/// transactions are deleted: the database stays around 2 MiB, as a cache
/// with an expiry does.
const TRIM_EVERY: u64 = 100;
const EVENTS_KEPT_TX: u64 = 2500;
const MARKER: &str = "vmsync-tx";

/// Schema and initial rows; ends with the marker for transaction 0.
pub fn schema_sql() -> String {
    format!(
        "PRAGMA journal_mode=WAL;\n\
         PRAGMA synchronous=NORMAL;\n\
         CREATE TABLE items(id INTEGER PRIMARY KEY, owner INTEGER NOT NULL, updated INTEGER NOT NULL, \
         score INTEGER NOT NULL, title TEXT NOT NULL);\n\
         CREATE INDEX items_owner ON items(owner);\n\
         CREATE TABLE events(id INTEGER PRIMARY KEY, item INTEGER NOT NULL, at INTEGER NOT NULL, payload TEXT NOT NULL);\n\
         CREATE INDEX events_item ON events(item);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ITEMS}) \
         INSERT INTO items SELECT i, i % {OWNERS}, 0, 0, printf('item-%08x', i * 2654435761 % 4294967296) FROM n;\n\
         SELECT '{MARKER}', 0;\n"
    )
}

/// Transaction `n` (from 1), ending with its marker query.
pub fn transaction_sql(n: u64) -> String {
    let mut s = String::from("BEGIN;\n");
    for j in 0..INSERTS_PER_TX {
        let r = rand2(n, j);
        let mut payload = String::with_capacity(96);
        for k in 0..6 {
            let _ = write!(payload, "{:016x}", rand2(r, k));
        }
        let _ = writeln!(s, "INSERT INTO events(item, at, payload) VALUES ({}, {n}, '{payload}');", 1 + r % ITEMS);
    }
    for j in 0..UPDATES_PER_TX {
        let r = rand2(n, 100 + j);
        let _ =
            writeln!(s, "UPDATE items SET score = score + {}, updated = {n}, title = 'item-{:08x}' WHERE id = {};", (r >> 40) % 100, r >> 32, 1 + r % ITEMS);
    }
    let r = rand2(n, 200);
    let _ = writeln!(s, "SELECT count(*), total(score) FROM items WHERE owner = {};", r % OWNERS);
    let _ = writeln!(s, "SELECT count(*), max(at) FROM events WHERE item = {};", 1 + (r >> 16) % ITEMS);
    if n.is_multiple_of(TRIM_EVERY) && n > EVENTS_KEPT_TX {
        let _ = writeln!(s, "DELETE FROM events WHERE at <= {};", n - EVENTS_KEPT_TX);
    }
    let _ = writeln!(s, "COMMIT;\nSELECT '{MARKER}', {n};");
    s
}

pub struct SqlStore {
    child: Child,
    input: ChildStdin,
    out: BufReader<ChildStdout>,
    txns: u64,
    sum: Checksum,
    program: PathBuf,
}

impl SqlStore {
    /// Starts `sqlite3` on a new database `dir/app.db` and creates the schema.
    pub fn create(sqlite: &Path, dir: &Path) -> io::Result<Self> {
        // A fresh database: the checksum assumes one.
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut child = Command::new(sqlite)
            // -bail: stop at the first error, which the driver then sees as
            // an early end (sqlite's message goes to the console).
            .args(["-batch", "-bail"])
            .arg(dir.join("app.db"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", sqlite.display())))?;
        let input = child.stdin.take().expect("stdin is piped");
        let out = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut s = SqlStore { child, input, out, txns: 0, sum: Checksum::default(), program: sqlite.to_path_buf() };
        s.run(&schema_sql(), 0)?;
        Ok(s)
    }

    /// Runs the next transaction and waits until sqlite has finished it.
    pub fn transaction(&mut self) -> io::Result<()> {
        let n = self.txns + 1;
        self.run(&transaction_sql(n), n)?;
        self.txns = n;
        Ok(())
    }

    pub fn transactions(&self) -> u64 {
        self.txns
    }

    pub fn checksum(&self) -> u64 {
        let mut c = self.sum;
        c.word(self.txns);
        c.finish()
    }

    fn run(&mut self, sql: &str, n: u64) -> io::Result<()> {
        self.input.write_all(sql.as_bytes())?;
        self.input.flush()?;
        let marker = format!("{MARKER}|{n}");
        let mut line = String::new();
        loop {
            line.clear();
            if self.out.read_line(&mut line)? == 0 {
                let status = self.child.wait()?;
                return Err(io::Error::other(format!("{} stopped in transaction {n} ({status})", self.program.display())));
            }
            let l = line.trim_end();
            if l == marker {
                return Ok(());
            }
            self.sum.bytes(l.as_bytes());
            self.sum.word(l.len() as u64);
        }
    }
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_a_function_of_their_number() {
        assert_eq!(transaction_sql(7), transaction_sql(7));
        assert_ne!(transaction_sql(7), transaction_sql(8));
        let t = transaction_sql(2600);
        assert!(t.starts_with("BEGIN;\n") && t.ends_with("COMMIT;\nSELECT 'vmsync-tx', 2600;\n"), "{t}");
        assert!(t.contains("DELETE FROM events WHERE at <= 100;"), "{t}");
        assert!(!transaction_sql(2601).contains("DELETE"));
        assert!(schema_sql().ends_with("SELECT 'vmsync-tx', 0;\n"));
    }

    /// Runs the real thing when the host has a `sqlite3` (the guest's is
    /// Debian's arm64 build of the same program).
    #[test]
    fn same_transactions_same_checksum_with_a_host_sqlite3() {
        let Some(sqlite) = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("sqlite3")).find(|p| p.is_file())) else {
            eprintln!("no sqlite3 on this host: skipped");
            return;
        };
        let base = std::env::temp_dir().join(format!("vmsync-sqlstore-test-{}", std::process::id()));
        let mut a = SqlStore::create(&sqlite, &base.join("a")).unwrap();
        let mut b = SqlStore::create(&sqlite, &base.join("b")).unwrap();
        for _ in 0..50 {
            a.transaction().unwrap();
            b.transaction().unwrap();
        }
        assert_eq!(a.transactions(), 50);
        assert_eq!(a.checksum(), b.checksum());
        // What Debian's arm64 sqlite3 (3.40.1) printed in a plain-QEMU guest.
        assert_eq!(a.checksum(), 0x006c3235ccf871b5);
        b.transaction().unwrap();
        assert_ne!(a.checksum(), b.checksum());
        drop((a, b));
        std::fs::remove_dir_all(base).unwrap();
    }
}
