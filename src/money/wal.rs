//! The money writer's care of SQLite's write-ahead log: when to checkpoint it, and flushing it
//! to disk ahead of the checkpoint, off the writer's thread.
//!
//! With `synchronous = NORMAL` a commit only writes its frames to the WAL; nothing is synced
//! until a checkpoint, which syncs the WAL (everything written since the last one: ~4 MB at
//! SQLite's default of 1 000 frames), copies its pages into the database, syncs that, and
//! syncs the WAL's new header at the next commit. SQLite runs it inside the commit that takes
//! the WAL past 1 000 frames, so that commit's casts waited for all of it, and every
//! settlement queued meanwhile as well. Measured on the project machine beside a CPU-bound
//! neighbour (benches/README.md, "Noisy neighbour", "The WAL's checkpoints"): checkpoints
//! held the writer ~8 ms (median), the first sync alone 4–6 ms of it (18–25 ms at times), and
//! every one of another tenant's slowest 1 % of casts overlapped a checkpoint.
//!
//! So the writer takes checkpoints over from SQLite ([`WalCare::after_job`]):
//! - it checkpoints (`PASSIVE`) at the same 1 000 frames, but after it has answered the job
//!   whose commit crossed the mark, not inside that commit;
//! - every [`FLUSH_FRAMES`] frames it asks a thread of its own (`spellhost-wal-flush`) to
//!   `fdatasync` the WAL. That thread touches no SQLite lock, and the writer goes on
//!   committing meanwhile; by the checkpoint, little of the WAL is left to sync.
//!
//! A checkpoint still holds the writer (~3 ms there): the DB's sync, and the sync of the new
//! WAL header inside the first commit after it, stay where SQLite puts them. The sqlx pool's
//! connections keep SQLite's autocheckpoint for their own (rare) writes.
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

/// WAL frames written between two flushes by the flush thread. Not tuned: it leaves the
/// checkpoint's first sync at most ~800 KB to write (a millisecond or so on the project's
/// disk) for five device flushes per checkpoint instead of one.
pub const FLUSH_FRAMES: i32 = 200;

thread_local! {
    /// Frames in the WAL after the last commit on this thread since [`WalCare::after_job`]
    /// last looked, as SQLite's WAL hook reports them; `None` when nothing was committed.
    static COMMITTED_FRAMES: Cell<Option<i32>> = const { Cell::new(None) };
}

/// SQLite's WAL hook, called by every commit on the connection, on the committing thread
/// (the writer's). Installing any WAL hook turns SQLite's own autocheckpoint off on this
/// connection; [`WalCare`] checkpoints instead.
fn note_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    COMMITTED_FRAMES.set(Some(frames));
    Ok(())
}

/// The writer's side: reads the frame count its commits left and decides what is due. Lives
/// on the writer's thread, as the hook's count does.
pub struct WalCare {
    counters: Arc<DbCounters>,
    /// Asks the flush thread for one flush; a flush already asked for covers this one.
    flush: SyncSender<()>,
    /// The frame count at the last flush asked for (0 after the WAL restarted).
    flushed_at: i32,
}

/// A row of `PRAGMA wal_checkpoint`.
struct CheckpointRow {
    /// 1 when the checkpoint could not run: another connection was checkpointing.
    busy: i64,
    /// Frames in the WAL (−1 when it could not be read).
    frames: i64,
    /// Frames now copied into the database (−1 likewise).
    copied: i64,
}

impl CheckpointRow {
    fn copied_everything(&self) -> bool {
        self.busy == 0 && self.frames >= 0 && self.copied == self.frames
    }
}

impl WalCare {
    /// Hooks `conn` (the writer's connection, in WAL mode, on the database at `database`)
    /// and starts the flush thread of its WAL. The thread ends when this is dropped.
    pub fn start(
        conn: &rusqlite::Connection,
        database: &str,
        counters: Arc<DbCounters>,
    ) -> std::io::Result<WalCare> {
        conn.wal_hook(Some(note_frames));
        // SQLite's own idea of the file (absolute, links resolved), where it has one.
        let database = conn.path().filter(|p| !p.is_empty()).unwrap_or(database);
        let wal = PathBuf::from(format!("{database}-wal"));
        let (flush, asked) = std::sync::mpsc::sync_channel(1);
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

    /// Runs after each job of the writer, once its callers have their answers: when the
    /// job committed, asks for a flush or checkpoints, whichever its commits made due.
    pub fn after_job(&mut self, conn: &rusqlite::Connection) {
        let Some(frames) = COMMITTED_FRAMES.take() else {
            return;
        };
        if frames < self.flushed_at {
            // The WAL started over (after a checkpoint, ours or another connection's).
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
        let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok(CheckpointRow {
                busy: row.get(0)?,
                frames: row.get(1)?,
                copied: row.get(2)?,
            })
        });
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.checkpoint_microseconds.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match outcome {
            // Every frame copied: the next commit starts the WAL over from its beginning.
            Ok(row) if row.copied_everything() => self.flushed_at = 0,
            // Another connection was checkpointing, or a reader still needs older pages (a
            // long read on the pool): the next commit tries again, as SQLite's own
            // autocheckpoint does, and meanwhile the WAL grows as it would have.
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
            // A write-back error: Linux reports it to every descriptor open on the file, so
            // SQLite's next sync of the WAL (a checkpoint's) fails on it too.
            Err(error) => tracing::error!(error = %error, "flushing the WAL to disk failed"),
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

    /// A writer connection with [`WalCare`] installed, as the money writer has it.
    fn hooked_writer() -> (
        tempfile::TempDir,
        rusqlite::Connection,
        String,
        Arc<DbCounters>,
        WalCare,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, path) = writer(&dir);
        let counters = Arc::new(DbCounters::default());
        let care = WalCare::start(&conn, &path, counters.clone()).expect("start");
        (dir, conn, path, counters, care)
    }

    /// One commit that writes about `pages` new pages.
    fn commit(conn: &rusqlite::Connection, pages: usize) {
        conn.execute(
            "INSERT INTO t (body) VALUES (?1)",
            ["x".repeat(pages * 4000)],
        )
        .expect("insert");
    }

    /// A file's length; 0 when it is missing.
    fn len(file: &str) -> u64 {
        std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
    }

    fn wal_len(path: &str) -> u64 {
        len(&format!("{path}-wal"))
    }

    /// A WAL frame: its header and one page.
    const FRAME: u64 = 24 + 4096;

    fn wait_for_flushes(counters: &DbCounters, count: u64) {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while counters.wal_flushes.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn the_writer_checkpoints_and_the_wal_starts_over_instead_of_growing() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        // ~5 500 frames in all, five checkpoints' worth.
        for _ in 0..500 {
            commit(&conn, 10);
            care.after_job(&conn);
        }
        assert!(
            counters.checkpoints.load(Ordering::Relaxed) >= 4,
            "checkpoints: {counters:?}"
        );
        // Without them the WAL would hold every frame (~22 MB); it starts over instead, so it
        // never grows much past the checkpoint's mark.
        assert!(
            wal_len(&path) <= (CHECKPOINT_FRAMES as u64 + 20) * FRAME + 32,
            "WAL of {} bytes",
            wal_len(&path)
        );
        // The checkpoints copied the rows' pages into the database file itself: at least the
        // 4 000 frames of four checkpoints, ten of each eleven a new page.
        assert!(
            len(&path) >= 3_000 * 4096,
            "database of {} bytes",
            len(&path)
        );
    }

    #[test]
    fn sqlite_no_longer_checkpoints_inside_the_writers_commits() {
        let (_dir, conn, path, _counters, _care) = hooked_writer();
        // ~1 650 frames without `after_job`: SQLite's autocheckpoint would have started the
        // WAL over at 1 000; with the hook installed the frames stay until the writer acts.
        for _ in 0..150 {
            commit(&conn, 10);
        }
        assert!(
            wal_len(&path) > (CHECKPOINT_FRAMES as u64 + 300) * FRAME,
            "WAL of {} bytes",
            wal_len(&path)
        );
    }

    #[test]
    fn a_reader_holding_old_pages_delays_the_restart_until_it_lets_go() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        commit(&conn, 10);
        let reader = rusqlite::Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").expect("begin");
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(seen, 1);
        // Past the mark twice over while the reader holds its snapshot: every commit past it
        // tries a checkpoint, none can start the WAL over.
        for _ in 0..200 {
            commit(&conn, 10);
            care.after_job(&conn);
        }
        let pinned = wal_len(&path);
        assert!(
            pinned > 2 * CHECKPOINT_FRAMES as u64 * FRAME,
            "WAL of {pinned} bytes"
        );
        assert!(counters.checkpoints.load(Ordering::Relaxed) >= 100);
        // The reader lets go: the next checkpoint copies everything and the WAL starts over,
        // so writing as much again does not grow it.
        reader.execute_batch("COMMIT").expect("commit");
        // One more commit at the WAL's end, then its checkpoint copies everything.
        commit(&conn, 10);
        care.after_job(&conn);
        let released = wal_len(&path);
        assert!(released <= pinned + 20 * FRAME, "WAL of {released} bytes");
        for _ in 0..200 {
            commit(&conn, 10);
            care.after_job(&conn);
        }
        assert_eq!(
            wal_len(&path),
            released,
            "the WAL grew after the reader let go"
        );
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 402);
    }

    #[test]
    fn the_flush_thread_syncs_the_wal_every_two_hundred_frames() {
        let (_dir, conn, _path, counters, mut care) = hooked_writer();
        // Three rounds of ~220 frames, each crossing one more multiple of 200: one flush
        // each, not one per commit. The thread flushes in its own time, so each round waits
        // for its flush (a request made while one is pending would be folded into it).
        for round in 1..=3 {
            for _ in 0..20 {
                commit(&conn, 10);
                care.after_job(&conn);
            }
            wait_for_flushes(&counters, round);
        }
        drop(care);
        assert_eq!(counters.wal_flushes.load(Ordering::Relaxed), 3);
        assert_eq!(counters.checkpoints.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_a_checkpoint_that_copied_every_frame_counts_as_done() {
        let row = |busy, frames, copied| CheckpointRow {
            busy,
            frames,
            copied,
        };
        assert!(row(0, 1_000, 1_000).copied_everything());
        assert!(row(0, 0, 0).copied_everything());
        // A reader held older pages.
        assert!(!row(0, 1_000, 600).copied_everything());
        // Another connection was checkpointing: SQLite answers (1, -1, -1).
        assert!(!row(1, -1, -1).copied_everything());
        assert!(!row(0, -1, -1).copied_everything());
    }
}
