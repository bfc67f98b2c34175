//! The `sqlite` backend, the default: one database file, `DATA_DIR/m3u-proxy.db`, through
//! rusqlite with SQLite compiled in (`bundled`), so the engine is the same on every
//! machine.
//!
//! - **WAL mode**: a commit appends to the write-ahead log instead of rewriting pages in
//!   place, so readers never block the writer and a crash mid-commit leaves the last
//!   committed state.
//! - **`synchronous=FULL`**: every commit is fsynced before it is acknowledged. `NORMAL`
//!   (fsync only at checkpoints) survives a killed process but may lose the last commits
//!   on power loss, and the issue promises that nothing acknowledged is lost to either.
//!   Commits are few (management writes, grouped when they queue, and one counter flush
//!   per interval), so the fsync costs little; see BENCHMARKS.md.
//! - **Schema version** in `PRAGMA user_version`, raised by [`MIGRATIONS`] in order, each
//!   in its own transaction. A file from a newer version is refused, never altered.
//! - Files are created mode 0600 (SQLite gives its `-wal` and `-shm` files the mode of
//!   the database), the directory 0700: upstream header values (tokens, cookies) are stored
//!   here.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::{Backend, Batch, CounterKey, CounterSet, Kind, Loaded, StoreError, DB_FILE};

/// Schema migrations: `MIGRATIONS[n]` takes version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: documents by kind and id, and additive counters.
    "CREATE TABLE docs (
         kind TEXT NOT NULL,
         id   TEXT NOT NULL,
         body TEXT NOT NULL,
         PRIMARY KEY (kind, id)
     ) WITHOUT ROWID;
     CREATE TABLE counters (
         key       TEXT PRIMARY KEY,
         bytes     INTEGER NOT NULL DEFAULT 0,
         segments  INTEGER NOT NULL DEFAULT 0,
         errors    INTEGER NOT NULL DEFAULT 0,
         failovers INTEGER NOT NULL DEFAULT 0
     ) WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const TOTALS_KEY: &str = "totals";
const STREAM_PREFIX: &str = "stream:";

/// An open database.
#[derive(Debug)]
pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
}

impl SqliteBackend {
    /// Opens (creating on first start) `dir/m3u-proxy.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<SqliteBackend, StoreError> {
        let directory = |e: std::io::Error| StoreError::Directory {
            path: dir.display().to_string(),
            detail: e.to_string(),
        };
        create_private_dir(dir).map_err(directory)?;
        let path = dir.join(DB_FILE);
        create_private_file(&path).map_err(directory)?;
        let shown = path.display().to_string();
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&shown, e))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) {
            return Err(StoreError::Directory {
                path: dir.display().to_string(),
                detail: format!("{shown} can only be opened read-only"),
            });
        }
        let mut backend = SqliteBackend { conn, path };
        backend.configure().map_err(|e| classify(&shown, e))?;
        backend.migrate()?;
        Ok(backend)
    }

    fn configure(&self) -> rusqlite::Result<()> {
        // The first read of the file: a file that is not a database fails here.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode");
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "foreign_keys", "OFF")?;
        self.conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let shown = self.path.display().to_string();
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| classify(&shown, e))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: shown,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            let to = version as i64 + 1;
            let tx = self.conn.transaction().map_err(|e| classify(&shown, e))?;
            tx.execute_batch(sql).map_err(|e| classify(&shown, e))?;
            tx.pragma_update(None, "user_version", to)
                .map_err(|e| classify(&shown, e))?;
            tx.commit().map_err(|e| classify(&shown, e))?;
            tracing::info!(path = %shown, version = to, "store schema migrated");
        }
        Ok(())
    }

    fn load_all(&mut self) -> rusqlite::Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut docs = self
            .conn
            .prepare("SELECT kind, id, body FROM docs ORDER BY kind, id")?;
        let rows = docs.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (kind, id, body) = row?;
            let Some(kind) = Kind::parse(&kind) else {
                tracing::warn!(kind = %kind, id = %id, "stored document of an unknown kind ignored");
                continue;
            };
            match serde_json::from_str(&body) {
                Ok(doc) => loaded.docs.entry(kind).or_default().push((id, doc)),
                Err(e) => {
                    tracing::warn!(kind = kind.as_str(), id = %id, error = %e, "unreadable stored document ignored")
                }
            }
        }
        let mut counters = self
            .conn
            .prepare("SELECT key, bytes, segments, errors, failovers FROM counters")?;
        let rows = counters.query_map([], |r| {
            let n = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok((
                r.get::<_, String>(0)?,
                CounterSet {
                    bytes: n(1)?,
                    segments: n(2)?,
                    errors: n(3)?,
                    failovers: n(4)?,
                },
            ))
        })?;
        for row in rows {
            let (key, set) = row?;
            if key == TOTALS_KEY {
                loaded.totals = set;
            } else if let Some(id) = key.strip_prefix(STREAM_PREFIX) {
                loaded.stream_counters.insert(id.to_string(), set);
            }
        }
        Ok(loaded)
    }

    fn apply_batch(&mut self, batch: &Batch) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO docs (kind, id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM docs WHERE kind = ?1 AND id = ?2")?;
            let mut delete_counters = tx.prepare_cached("DELETE FROM counters WHERE key = ?1")?;
            for ((kind, id), doc) in &batch.docs {
                match doc {
                    Some(doc) => {
                        put.execute(params![kind.as_str(), id, doc.to_string()])?;
                    }
                    None => {
                        delete.execute(params![kind.as_str(), id])?;
                        if *kind == Kind::Stream {
                            delete_counters.execute(params![stream_key(id)])?;
                        }
                    }
                }
            }
            // Increments of a stream whose document is gone (deleted while they were
            // on their way) are dropped with it.
            let mut add = tx.prepare_cached(
                "INSERT INTO counters (key, bytes, segments, errors, failovers)
                 SELECT ?1, ?2, ?3, ?4, ?5
                 WHERE ?6 IS NULL OR EXISTS (SELECT 1 FROM docs WHERE kind = 'stream' AND id = ?6)
                 ON CONFLICT (key) DO UPDATE SET
                     bytes = bytes + excluded.bytes,
                     segments = segments + excluded.segments,
                     errors = errors + excluded.errors,
                     failovers = failovers + excluded.failovers",
            )?;
            for (key, delta) in &batch.counters {
                let (name, stream) = match key {
                    CounterKey::Totals => (TOTALS_KEY.to_string(), None),
                    CounterKey::Stream(id) => (stream_key(id), Some(id.as_str())),
                    CounterKey::Listed(id) => (stream_key(id), None),
                };
                let [b, s, e, f] = delta.to_array().map(sql_int);
                add.execute(params![name, b, s, e, f, stream])?;
            }
        }
        tx.commit()
    }

    /// The stored document, for tests and tools.
    pub fn get(&self, kind: Kind, id: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT body FROM docs WHERE kind = ?1 AND id = ?2",
                params![kind.as_str(), id],
                |r| r.get(0),
            )
            .optional()
    }
}

impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> Option<String> {
        Some(self.path.display().to_string())
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        let shown = self.path.display().to_string();
        self.load_all().map_err(|e| classify(&shown, e))
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.apply_batch(batch)
            .map_err(|e| StoreError::Write(e.to_string()))
    }
}

fn stream_key(id: &str) -> String {
    format!("{STREAM_PREFIX}{id}")
}

/// SQLite integers are signed; counters never get near 2^63.
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A start-up error of SQLite, told as the operator needs it.
fn classify(path: &str, e: rusqlite::Error) -> StoreError {
    let detail = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_string(),
            detail,
        },
        _ => StoreError::Open {
            path: path.to_string(),
            detail,
        },
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates the database file empty with mode 0600 unless it exists, and takes away the
/// group and other bits of one that does.
#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
}
