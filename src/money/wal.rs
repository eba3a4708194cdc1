//! The money writer's care of SQLite's write-ahead log: when to checkpoint it, and doing most
//! of the checkpoint, and flushing the WAL ahead of it, off the writer's thread.
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
//! So the writer takes checkpoints over from SQLite ([`WalCare::after_job`]), and hands the
//! bulk of each to a thread of its own (`spellhost-wal`, with a connection of its own):
//! - every [`FLUSH_FRAMES`] frames, the thread `fdatasync`s the WAL, so that by the checkpoint
//!   little of it is left to sync;
//! - at [`CHECKPOINT_FRAMES`] (SQLite's own mark), the thread checkpoints (`PASSIVE`): it syncs
//!   the WAL and copies every frame written so far into the database, while the writer goes
//!   on committing, and then syncs the database (SQLite leaves that sync to the checkpoint
//!   that reaches the WAL's end, the writer's, which would otherwise write every copied page
//!   back itself: 28–88 ms at times on the project's disk);
//! - once it has, the writer checkpoints what was written meanwhile (`PASSIVE`, a few frames)
//!   after the next job it has answered. Only a checkpoint between the writer's own commits
//!   can copy *every* frame, which is what lets the next commit start the WAL over from its
//!   beginning instead of growing it. (When nothing was written meanwhile, the thread's
//!   checkpoint already did, and the writer has nothing to do.)
//!
//! The writer's part still syncs the WAL and the database, and the first commit after it the
//! WAL's new header (~0.5 ms each on the project's disk, more when it is busy); the copy of
//! ~4 MB and its write-back, which made most of a checkpoint's time, are off the writer. The WAL
//! grows past the mark by what is written while the thread works. If the thread is gone or its
//! checkpoint failed, the writer checkpoints on its own, as before. The sqlx pool's connections
//! keep SQLite's autocheckpoint for their own (rare) writes.
//!
//! An extra sync only makes more of the WAL durable sooner, and a checkpoint on another
//! connection is one SQLite supports beside a writer: what a commit promises, and the syncs
//! every checkpoint makes, are unchanged.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use super::store::DbCounters;

/// WAL frames after which a checkpoint starts: SQLite's own default.
pub const CHECKPOINT_FRAMES: i32 = 1_000;

/// WAL frames written between two flushes by the WAL thread. Not tuned: it leaves the
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

/// What the writer asks of the WAL thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// `fdatasync` the WAL.
    Flush,
    /// Checkpoint (`PASSIVE`) on the thread's own connection, and answer with the outcome.
    Checkpoint,
}

/// The writer's side: reads the frame count its commits left and decides what is due. Lives
/// on the writer's thread, as the hook's count does.
pub struct WalCare {
    counters: Arc<DbCounters>,
    asks: Sender<Ask>,
    /// The outcome of each checkpoint the thread ran.
    checkpointed: Receiver<Result<CheckpointRow, String>>,
    /// The thread is checkpointing (asked, and not yet finished by the writer).
    background: bool,
    /// The thread's answer, when it was waited for rather than polled (tests).
    answered: Option<Result<CheckpointRow, String>>,
    /// The frame count at the last flush asked for (0 after the WAL restarted).
    flushed_at: i32,
}

/// A row of `PRAGMA wal_checkpoint`.
#[derive(Debug, Clone, Copy)]
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

    /// Whether the writer must checkpoint after this, the thread's checkpoint, now that the
    /// WAL holds `frames_now`. Not when the thread copied every frame the WAL had when it
    /// started and the writer has committed nothing since (the next commit starts the WAL
    /// over), nor when that commit already has (the WAL is shorter than the thread saw).
    /// Otherwise the writer copies what the thread could not and what came after.
    fn left_for_the_writer(&self, frames_now: i32) -> bool {
        !(self.copied_everything() && i64::from(frames_now) <= self.frames)
    }
}

fn checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<CheckpointRow> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(CheckpointRow {
            busy: row.get(0)?,
            frames: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

/// Adds the time since `started` to a running total of microseconds.
fn add_time(total: &AtomicU64, started: Instant) {
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    total.fetch_add(micros, Ordering::Relaxed);
}

impl WalCare {
    /// Hooks `conn` (the writer's connection, in WAL mode, on the database at `database`)
    /// and starts the WAL thread. The thread ends when this is dropped.
    pub fn start(
        conn: &rusqlite::Connection,
        database: &str,
        counters: Arc<DbCounters>,
    ) -> std::io::Result<WalCare> {
        conn.wal_hook(Some(note_frames));
        // SQLite's own idea of the file (absolute, links resolved), where it has one.
        let database = PathBuf::from(conn.path().filter(|p| !p.is_empty()).unwrap_or(database));
        let (asks, asked) = std::sync::mpsc::channel();
        let (answer, checkpointed) = std::sync::mpsc::channel();
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("spellhost-wal".into())
            .spawn(move || serve_asks(&database, &asked, &answer, &thread_counters))?;
        Ok(WalCare {
            counters,
            asks,
            checkpointed,
            background: false,
            answered: None,
            flushed_at: 0,
        })
    }

    /// Runs after each job of the writer, once its callers have their answers: when the
    /// job committed, finishes a checkpoint the thread has done, or asks the thread for a
    /// checkpoint or a flush, whichever its commits made due.
    pub fn after_job(&mut self, conn: &rusqlite::Connection) {
        let Some(frames) = COMMITTED_FRAMES.take() else {
            return;
        };
        if frames < self.flushed_at {
            // The WAL started over (after a checkpoint, ours or another connection's).
            self.flushed_at = 0;
        }
        if self.background {
            let answer = self
                .answered
                .take()
                .map_or_else(|| self.checkpointed.try_recv(), Ok);
            match answer {
                // Still at it: the writer goes on committing meanwhile.
                Err(TryRecvError::Empty) => return,
                Ok(Ok(row)) => {
                    self.background = false;
                    if row.left_for_the_writer(frames) {
                        self.finish(conn);
                    }
                    return;
                }
                // The writer checkpoints on its own this time; the thread is asked again at the
                // next mark.
                Ok(Err(error)) => {
                    tracing::warn!(error, "checkpointing the WAL off the writer failed");
                    self.background = false;
                    self.finish(conn);
                    return;
                }
                // From now on asking fails, and the writer checkpoints on its own.
                Err(TryRecvError::Disconnected) => {
                    tracing::warn!("the WAL thread is gone; the writer checkpoints alone");
                    self.background = false;
                }
            }
        }
        if frames >= CHECKPOINT_FRAMES {
            if self.asks.send(Ask::Checkpoint).is_ok() {
                self.background = true;
            } else {
                self.finish(conn);
            }
        } else if frames - self.flushed_at >= FLUSH_FRAMES {
            self.flushed_at = frames;
            // A thread that is gone leaves the flushing to the checkpoints; said above.
            let _ = self.asks.send(Ask::Flush);
        }
    }

    /// The writer's own checkpoint: what was written since the thread's, or all of it when
    /// the thread could not help.
    fn finish(&mut self, conn: &rusqlite::Connection) {
        let started = Instant::now();
        let outcome = checkpoint(conn);
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        add_time(&self.counters.checkpoint_microseconds, started);
        match outcome {
            // Every frame copied: the next commit starts the WAL over from its beginning.
            Ok(row) if row.copied_everything() => self.flushed_at = 0,
            // Another connection was checkpointing, or a reader still needs older pages (a
            // long read on the pool): past the mark, the next commit starts again, as SQLite's
            // own autocheckpoint does, and meanwhile the WAL grows as it would have.
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "checkpointing the WAL failed"),
        }
    }

    /// Waits for the thread's checkpoint, if one is running, so that the next `after_job`
    /// finds it done (tests: the thread's pace is not theirs).
    #[cfg(test)]
    fn wait_for_background(&mut self) {
        if self.background && self.answered.is_none() {
            self.answered = Some(self.checkpointed.recv().expect("the WAL thread answers"));
        }
    }
}

/// The WAL thread: serves the writer's asks until the writer is gone. Asks that queued up
/// while it worked are served once: a checkpoint syncs the WAL as well. The WAL is opened for
/// each flush, so a WAL that SQLite deleted and made anew is still the one flushed; a missing
/// WAL (nothing written yet) is skipped. SQLite takes no lock on the WAL file itself, so
/// closing it again is safe; see [`DatabaseFile`] for the database's. The thread's connection
/// is opened at its first checkpoint, and kept.
fn serve_asks(
    database: &std::path::Path,
    asked: &Receiver<Ask>,
    answer: &Sender<Result<CheckpointRow, String>>,
    counters: &DbCounters,
) {
    let wal = PathBuf::from(format!("{}-wal", database.display()));
    let mut conn: Option<rusqlite::Connection> = None;
    let mut database_file = DatabaseFile::default();
    while let Ok(first) = asked.recv() {
        let asks: Vec<Ask> = std::iter::once(first).chain(asked.try_iter()).collect();
        if asks.contains(&Ask::Checkpoint) {
            let started = Instant::now();
            let outcome = connect(database, &mut conn).and_then(checkpoint);
            // SQLite syncs the database only in the checkpoint that reaches the WAL's end,
            // which, while the writer commits, is the writer's: it would find every page
            // copied here still to write back. Written back now, they leave it a few.
            if let Ok(row) = &outcome
                && let Err(error) = database_file.sync_after(database, row)
            {
                tracing::warn!(error = %error, "flushing the database after a checkpoint failed");
            }
            counters
                .background_checkpoints
                .fetch_add(1, Ordering::Relaxed);
            add_time(&counters.background_checkpoint_microseconds, started);
            if answer.send(outcome.map_err(|e| e.to_string())).is_err() {
                return;
            }
            continue;
        }
        let flushed = std::fs::File::open(&wal).and_then(|file| file.sync_data());
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

/// The WAL thread's descriptor of the database file, for its syncs. Opened at the first, and
/// **never closed**: closing any descriptor of a file drops every POSIX lock the process holds
/// on it, SQLite's own included (<https://sqlite.org/howtocorrupt.html>, 2.2), and a backup or
/// restore in another process could then take the database from under the server. So it is
/// kept to the end of the process: one descriptor per database the process writes.
#[derive(Default)]
struct DatabaseFile {
    file: Option<std::mem::ManuallyDrop<std::fs::File>>,
    /// Frames copied into the database as of the last sync: a checkpoint that copied no more
    /// (a reader holds older pages) has nothing new to write back.
    synced_copied: i64,
}

impl DatabaseFile {
    fn sync_after(
        &mut self,
        database: &std::path::Path,
        row: &CheckpointRow,
    ) -> std::io::Result<()> {
        if row.copied <= 0 || row.copied == self.synced_copied {
            return Ok(());
        }
        let file = match &self.file {
            Some(file) => file,
            None => self
                .file
                .insert(std::mem::ManuallyDrop::new(std::fs::File::open(database)?)),
        };
        file.sync_data()?;
        self.synced_copied = row.copied;
        Ok(())
    }
}

/// The WAL thread's connection, opened on first use with the writer's durability settings
/// (a checkpoint syncs as `synchronous` says).
fn connect<'a>(
    database: &std::path::Path,
    conn: &'a mut Option<rusqlite::Connection>,
) -> rusqlite::Result<&'a rusqlite::Connection> {
    if conn.is_none() {
        let opened = rusqlite::Connection::open(database)?;
        opened.execute_batch("PRAGMA synchronous = NORMAL;")?;
        *conn = Some(opened);
    }
    conn.as_ref().ok_or(rusqlite::Error::InvalidQuery)
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

    /// One commit of ~11 frames, then what the writer does after a job; the thread's
    /// checkpoint, when one is running, is waited for (the writer commits nothing while the
    /// thread works: a quiet server).
    fn job(conn: &rusqlite::Connection, care: &mut WalCare) {
        commit(conn, 10);
        care.after_job(conn);
        care.wait_for_background();
    }

    #[test]
    fn the_thread_checkpoints_and_the_wal_starts_over_instead_of_growing() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        // ~5 500 frames in all, five checkpoints' worth.
        for _ in 0..500 {
            job(&conn, &mut care);
        }
        // Nothing was committed while the thread worked, so its checkpoints copied
        // everything and left the writer nothing to do: the next commit started the WAL over.
        assert!(
            counters.background_checkpoints.load(Ordering::Relaxed) >= 4,
            "checkpoints: {counters:?}"
        );
        assert_eq!(counters.checkpoints.load(Ordering::Relaxed), 0);
        // Without checkpoints the WAL would hold every frame (~22 MB); it starts over instead,
        // so it never grows much past the mark.
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
    fn a_writer_that_keeps_committing_finishes_the_threads_checkpoints_and_the_wal_stays_bounded() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        // ~33 000 frames at a few thousand commits a second, never waiting for the thread:
        // its checkpoints copy what the WAL held when they started while the writer goes on,
        // and the writer copies the rest after it. (How much the WAL grows meanwhile is the
        // thread's pace, not the test's: the bound below is loose on purpose.)
        let rounds = 3_000;
        for _ in 0..rounds {
            commit(&conn, 10);
            care.after_job(&conn);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        care.wait_for_background();
        assert!(
            counters.background_checkpoints.load(Ordering::Relaxed) >= 1,
            "checkpoints: {counters:?}"
        );
        // The WAL started over again and again: it holds a fraction of what was written.
        let written = rounds * 11 * FRAME;
        assert!(
            wal_len(&path) < written / 2,
            "WAL of {} bytes after {written} written",
            wal_len(&path)
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, i64::try_from(rounds).expect("rows"));
    }

    /// The frame count the last commit on this thread left, as the hook reported it.
    fn frames_now() -> i32 {
        let frames = COMMITTED_FRAMES.get().expect("a commit");
        COMMITTED_FRAMES.set(Some(frames));
        frames
    }

    /// Past the mark without the writer looking (~1 050 frames).
    fn past_the_mark(conn: &rusqlite::Connection) {
        for _ in 0..95 {
            commit(conn, 10);
        }
        assert!(frames_now() >= CHECKPOINT_FRAMES);
    }

    #[test]
    fn the_writer_copies_what_came_after_the_threads_checkpoint_and_the_wal_starts_over() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        past_the_mark(&conn);
        // The thread's checkpoint copied the WAL as it was then; the writer committed once
        // more meanwhile. (Its answer is given here: the thread's pace is not the test's.)
        let seen = i64::from(frames_now());
        commit(&conn, 10);
        care.background = true;
        care.answered = Some(Ok(CheckpointRow {
            busy: 0,
            frames: seen,
            copied: seen,
        }));
        care.after_job(&conn);
        assert_eq!(counters.checkpoints.load(Ordering::Relaxed), 1);
        // The writer's checkpoint copied everything: the next commit starts the WAL over.
        let len = wal_len(&path);
        commit(&conn, 10);
        assert!(frames_now() < 20, "{} frames", frames_now());
        assert_eq!(wal_len(&path), len, "the WAL grew");
    }

    #[test]
    fn when_the_threads_checkpoint_fails_the_writer_checkpoints_on_its_own() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        past_the_mark(&conn);
        care.background = true;
        care.answered = Some(Err("disk I/O error".into()));
        care.after_job(&conn);
        assert_eq!(counters.checkpoints.load(Ordering::Relaxed), 1);
        let len = wal_len(&path);
        job(&conn, &mut care);
        assert_eq!(wal_len(&path), len, "the WAL grew");
    }

    #[test]
    fn when_the_thread_is_gone_the_writer_checkpoints_on_its_own() {
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        // Both ends of the thread's channels gone, in the middle of a checkpoint.
        let (asks, gone) = std::sync::mpsc::channel();
        drop(gone);
        care.asks = asks;
        let (answer, checkpointed) = std::sync::mpsc::channel();
        drop(answer);
        care.checkpointed = checkpointed;
        care.background = true;
        // ~3 300 frames: three checkpoints' worth, all the writer's.
        for _ in 0..300 {
            job(&conn, &mut care);
        }
        assert!(counters.checkpoints.load(Ordering::Relaxed) >= 3);
        assert_eq!(counters.background_checkpoints.load(Ordering::Relaxed), 0);
        assert!(
            wal_len(&path) <= (CHECKPOINT_FRAMES as u64 + 20) * FRAME + 32,
            "WAL of {} bytes",
            wal_len(&path)
        );
    }

    /// Closing any descriptor of a file drops every POSIX lock the process holds on it:
    /// the thread's syncs of the database must not drop SQLite's (a WAL-mode connection holds
    /// a read lock on its database while it is open; /proc/locks lists it).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_threads_syncs_of_the_database_keep_sqlites_locks_on_it() {
        use std::os::unix::fs::MetadataExt as _;
        let (_dir, conn, path, counters, mut care) = hooked_writer();
        let inode = std::fs::metadata(&path).expect("database").ino();
        let held = || {
            std::fs::read_to_string("/proc/locks")
                .expect("/proc/locks")
                .lines()
                .filter(|line| line.contains(&format!(":{inode} ")))
                .count()
        };
        assert!(held() >= 1, "SQLite holds a lock on its database");
        // Two checkpoints by the thread, each followed by its sync of the database.
        for _ in 0..200 {
            job(&conn, &mut care);
        }
        assert!(counters.background_checkpoints.load(Ordering::Relaxed) >= 2);
        assert!(
            held() >= 1,
            "a lock SQLite held on the database was dropped"
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
        // Past the mark twice over while the reader holds its snapshot: past it, every other
        // commit starts a checkpoint on the thread and the next finishes it on the writer,
        // and none can start the WAL over.
        for _ in 0..200 {
            job(&conn, &mut care);
        }
        let pinned = wal_len(&path);
        assert!(
            pinned > 2 * CHECKPOINT_FRAMES as u64 * FRAME,
            "WAL of {pinned} bytes"
        );
        assert!(counters.checkpoints.load(Ordering::Relaxed) >= 50);
        assert!(counters.background_checkpoints.load(Ordering::Relaxed) >= 50);
        // The reader lets go. At most two more commits at the WAL's end (one to start a
        // checkpoint, one to finish it), and the checkpoint copies everything: the WAL starts
        // over, so writing as much again does not grow it.
        reader.execute_batch("COMMIT").expect("commit");
        job(&conn, &mut care);
        job(&conn, &mut care);
        let released = wal_len(&path);
        assert!(released <= pinned + 30 * FRAME, "WAL of {released} bytes");
        for _ in 0..200 {
            job(&conn, &mut care);
        }
        assert_eq!(
            wal_len(&path),
            released,
            "the WAL grew after the reader let go"
        );
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 403);
    }

    #[test]
    fn the_wal_thread_syncs_the_wal_every_two_hundred_frames() {
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

    #[test]
    fn the_writer_finishes_only_what_the_threads_checkpoint_left() {
        let row = |busy, frames, copied| CheckpointRow {
            busy,
            frames,
            copied,
        };
        // The thread copied all 1 000 frames: nothing was committed meanwhile (the WAL still
        // ends there, as far as the writer knows) or the WAL has already started over.
        assert!(!row(0, 1_000, 1_000).left_for_the_writer(1_000));
        assert!(!row(0, 1_000, 1_000).left_for_the_writer(11));
        // The writer committed 40 frames while the thread worked.
        assert!(row(0, 1_000, 1_000).left_for_the_writer(1_040));
        // A reader kept the thread from copying everything; or another checkpoint was running.
        assert!(row(0, 1_000, 600).left_for_the_writer(1_000));
        assert!(row(1, -1, -1).left_for_the_writer(1_000));
    }
}
