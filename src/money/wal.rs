//! The money writer's care of SQLite's write-ahead log: when to checkpoint it, and flushing it
//! to disk ahead of the checkpoint, off the writer's thread.
//!
//! With `synchronous = NORMAL` a commit only writes its frames to the WAL; nothing is synced
//! until a checkpoint, which syncs the WAL (everything written since the last one: ~4 MB at
//! SQLite's default of 1 000 frames), copies its pages into the database, syncs that, and
//! syncs the WAL's new header at the next commit. SQLite runs it inside the commit that takes
//! the WAL past 1 000 frames, so that commit's casts waited for all of it, and every
//! settlement queued meanwhile as well. Measured on the project machine beside a CPU-bound
//! neighbour (benches/README.md, "Noisy neighbour"): the first sync alone took 4–6 ms, 18–25
//! ms at times, of a checkpoint's ~8 ms, and every one of another tenant's slowest 1 % of
//! casts overlapped a checkpoint.
//!
//! So the writer takes checkpoints over from SQLite ([`WalCare::after_job`]):
//! - it checkpoints (`PASSIVE`) at the same 1 000 frames, but after it has answered the job
//!   whose commit crossed the mark, not inside that commit;
//! - every [`FLUSH_FRAMES`] frames it asks a thread of its own (`spellhost-wal-flush`) to
//!   `fdatasync` the WAL. That thread touches no SQLite lock, and the writer goes on
//!   committing meanwhile; by the checkpoint, little of the WAL is left to sync.
//!
//! An extra sync only makes more of the WAL durable sooner: what a commit promises, and the
//! checkpoint's own syncs, are unchanged.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Instant;

use super::store::DbCounters;

/// WAL frames after which the writer checkpoints: SQLite's own default.
pub const CHECKPOINT_FRAMES: i32 = 1_000;

/// WAL frames written between two flushes by the flush thread: a fifth of a checkpoint's.
pub const FLUSH_FRAMES: i32 = 200;

thread_local! {
    /// Frames in the WAL after the last commit on this thread, as SQLite's WAL hook reports.
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// SQLite's WAL hook (called by every commit on the connection, on the committing thread).
/// Installing any WAL hook turns SQLite's own autocheckpoint off; [`WalCare`] checkpoints.
fn note_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// The writer's side: reads the frame count its commits left and decides what is due.
pub struct WalCare {
    counters: Arc<DbCounters>,
    /// Asks the flush thread for one flush; a flush already asked for covers this one.
    flush: SyncSender<()>,
    /// The frame count at the last flush asked for (0 after the WAL restarted).
    flushed_at: i32,
}

impl WalCare {
    /// Hooks `conn` (the writer's connection, in WAL mode) and starts the flush thread of the
    /// WAL beside `database`. The thread ends when this is dropped.
    pub fn start(
        conn: &rusqlite::Connection,
        database: &str,
        counters: Arc<DbCounters>,
    ) -> std::io::Result<WalCare> {
        conn.wal_hook(Some(note_frames));
        let (flush, asked) = std::sync::mpsc::sync_channel(1);
        let wal = PathBuf::from(format!("{database}-wal"));
        let flushes = counters.clone();
        std::thread::Builder::new()
            .name("spellhost-wal-flush".into())
            .spawn(move || flush_when_asked(&wal, &asked, &flushes))?;
        Ok(WalCare {
            counters,
            flush,
            flushed_at: 0,
        })
    }

    /// Runs after each job of the writer, once its callers have their answers: asks for a
    /// flush, or checkpoints, when the job's commits made one due.
    pub fn after_job(&mut self, conn: &rusqlite::Connection) {
        let frames = WAL_FRAMES.get();
        if frames < self.flushed_at {
            // The WAL restarted (a checkpoint, or a commit on another connection).
            self.flushed_at = 0;
        }
        if frames >= CHECKPOINT_FRAMES {
            self.checkpoint(conn);
        } else if frames - self.flushed_at >= FLUSH_FRAMES {
            self.flushed_at = frames;
            match self.flush.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    tracing::warn!("the WAL flush thread is gone; checkpoints sync it all");
                }
            }
        }
    }

    fn checkpoint(&mut self, conn: &rusqlite::Connection) {
        let started = Instant::now();
        // (busy, frames in the WAL, frames copied into the database)
        let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.checkpoint_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match outcome {
            // Every frame copied: the next commit starts the WAL over from its beginning.
            Ok((log, copied)) if copied >= log => {
                WAL_FRAMES.set(0);
                self.flushed_at = 0;
            }
            // A reader still needs older pages (a long read on the pool): what is left is
            // copied at the next checkpoint, after the next commit, as SQLite itself does.
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "checkpointing the WAL failed"),
        }
    }
}

/// The flush thread: one `fdatasync` of the WAL per request, until the writer is gone. The
/// file is opened for each flush, so a WAL that SQLite deleted and made anew is still the
/// one flushed; a missing WAL (nothing written yet) is skipped.
fn flush_when_asked(wal: &std::path::Path, asked: &Receiver<()>, counters: &DbCounters) {
    while asked.recv().is_ok() {
        let flushed = std::fs::File::open(wal).and_then(|file| file.sync_data());
        match flushed {
            Ok(()) => {
                counters.wal_flushes.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(error = %error, "flushing the WAL failed; its checkpoint syncs it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &tempfile::TempDir) -> (rusqlite::Connection, String) {
        let path = dir.path().join("money.db").display().to_string();
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        )
        .expect("schema");
        (conn, path)
    }

    /// One commit that writes about `pages` new pages.
    fn commit(conn: &rusqlite::Connection, pages: usize) {
        conn.execute(
            "INSERT INTO t (body) VALUES (?1)",
            ["x".repeat(pages * 4000)],
        )
        .expect("insert");
    }

    fn wal_len(path: &str) -> u64 {
        std::fs::metadata(format!("{path}-wal"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    #[test]
    fn the_writer_checkpoints_and_the_wal_starts_over_instead_of_growing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, path) = writer(&dir);
        let counters = Arc::new(DbCounters::default());
        let mut care = WalCare::start(&conn, &path, counters.clone()).expect("start");
        // 5 000 frames in all, five checkpoints' worth.
        for _ in 0..500 {
            commit(&conn, 10);
            care.after_job(&conn);
        }
        assert!(
            counters.checkpoints.load(Ordering::Relaxed) >= 4,
            "checkpoints: {counters:?}"
        );
        // Without them the WAL would hold all 5 000 frames (~20 MB); it restarts instead,
        // so it never grows much past the checkpoint's mark.
        let frame = 4096 + 24;
        assert!(
            wal_len(&path) <= (CHECKPOINT_FRAMES as u64 + 20) * frame + 32,
            "WAL of {} bytes",
            wal_len(&path)
        );
        // And everything committed is in the database, read back by another connection.
        let reader = rusqlite::Connection::open(&path).expect("reader");
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 500);
    }

    #[test]
    fn sqlite_no_longer_checkpoints_inside_the_writers_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, path) = writer(&dir);
        let counters = Arc::new(DbCounters::default());
        let _care = WalCare::start(&conn, &path, counters.clone()).expect("start");
        // Past the mark without `after_job`: SQLite's autocheckpoint would have restarted
        // the WAL by now; with the hook installed the frames stay until the writer acts.
        for _ in 0..150 {
            commit(&conn, 10);
        }
        assert!(WAL_FRAMES.get() > CHECKPOINT_FRAMES, "{}", WAL_FRAMES.get());
        assert_eq!(counters.checkpoints.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_flush_thread_syncs_the_wal_every_few_hundred_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, path) = writer(&dir);
        let counters = Arc::new(DbCounters::default());
        let mut care = WalCare::start(&conn, &path, counters.clone()).expect("start");
        for _ in 0..60 {
            commit(&conn, 10);
            care.after_job(&conn);
        }
        // Three flushes were asked for (at ~200, 400 and 600 frames); the thread answers
        // in its own time, and a request made while one is pending is folded into it.
        drop(care);
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while counters.wal_flushes.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(counters.wal_flushes.load(Ordering::Relaxed) >= 1);
        assert_eq!(counters.checkpoints.load(Ordering::Relaxed), 0);
    }
}
