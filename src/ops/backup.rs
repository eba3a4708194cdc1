//! Online backup and restore of the embedded SQLite database.
//!
//! `backup` runs `VACUUM INTO` on a reader connection: one read transaction, so the copy is a
//! consistent snapshot while the server keeps serving (WAL lets the writer go on), compacted,
//! and written to a new file created 0600. The copy's ledger is then verified.
//!
//! `restore` refuses to touch a database that any process has open (it must get SQLite's
//! exclusive lock), verifies the backup's ledger on a private copy, moves the current
//! database aside (`….pre-restore-<ms>`, with its WAL) and renames the copy into place.
//! PostgreSQL has its own tools (`pg_dump`, `pg_restore`): see the README.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::files::{FILE_MODE, private_database, sqlite_file, with_suffix};
use crate::config::Config;
use crate::money::{self, ChainCheck};
use crate::store::{Backend, Db, now_ms};

const POSTGRES_HINT: &str = "this database is PostgreSQL: back it up with pg_dump and restore \
     it with pg_restore (see the README's operator section); spellhost backup and restore are \
     for the embedded SQLite database";

/// What a backup or restore produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub path: PathBuf,
    pub bytes: u64,
    pub ledger_entries: u64,
    /// Restore only: where the database that was replaced went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<PathBuf>,
}

/// Copies the configured SQLite database to `to` (which must not exist) while it may be in
/// use, then verifies the copy's ledger.
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<Report> {
    let database =
        sqlite_file(&config.database_url).ok_or_else(|| anyhow::anyhow!(POSTGRES_HINT))?;
    anyhow::ensure!(
        database.exists(),
        "{} does not exist: nothing to back up",
        database.display()
    );
    // VACUUM INTO writes into an empty file; creating it here first makes it 0600 (SQLite
    // would make it 0644) and refuses to overwrite an earlier backup.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let copied = vacuum_into(config, to).await;
    if let Err(error) = copied {
        let _ = std::fs::remove_file(to);
        return Err(error);
    }
    sync(to)?;
    let ledger_entries = verify_copy(to).await?;
    Ok(Report {
        path: to.to_path_buf(),
        bytes: std::fs::metadata(to)
            .with_context(|| format!("reading {}", to.display()))?
            .len(),
        ledger_entries,
        previous: None,
    })
}

async fn vacuum_into(config: &Config, to: &Path) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url, 2).await?;
    debug_assert_eq!(db.backend(), Backend::Sqlite);
    let target = to
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", to.display()))?;
    let result = sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(db.reader())
        .await
        .with_context(|| format!("copying the database into {}", to.display()));
    db.close().await;
    result.map(|_| ())
}

/// Opens an SQLite file that nothing else uses and verifies its ledger from seq 1.
async fn verify_copy(path: &Path) -> anyhow::Result<u64> {
    let url = format!("sqlite://{}?mode=rw", path.display());
    let db = Db::connect(&url, 2)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let checked = money::verify_chain(&db).await;
    db.close().await;
    match checked.with_context(|| format!("reading the ledger in {}", path.display()))? {
        ChainCheck::Intact { entries } => Ok(entries),
        ChainCheck::Broken { seq, reason } => anyhow::bail!(
            "the ledger in {} is broken at seq {seq}: {reason}",
            path.display()
        ),
    }
}

/// Replaces the configured SQLite database with the backup `from`. Refuses while any process
/// has the database open, and refuses a backup whose ledger does not verify.
pub async fn restore(config: &Config, from: &Path) -> anyhow::Result<Report> {
    let database =
        sqlite_file(&config.database_url).ok_or_else(|| anyhow::anyhow!(POSTGRES_HINT))?;
    anyhow::ensure!(from.is_file(), "{} is not a file", from.display());
    if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        super::files::private_dir(parent)?;
    }
    // A private copy beside the target: the backup itself is never opened for writing, and
    // the final rename is atomic on one file system.
    let staged = with_suffix(&database, &format!(".restore-{}", now_ms()));
    copy_private(from, &staged)?;
    let verified = verify_copy(&staged).await;
    let ledger_entries = match verified {
        Ok(entries) => entries,
        Err(error) => {
            remove_sqlite_files(&staged);
            return Err(error.context(format!("{} was not restored", from.display())));
        }
    };
    // The exclusive lock is held while the files move, so no server can open the old file in
    // between; a server started after the rename opens the restored one.
    let lock = match exclusive_lock(&database).await {
        Ok(lock) => lock,
        Err(error) => {
            remove_sqlite_files(&staged);
            return Err(error);
        }
    };
    let previous = move_aside(&database)?;
    std::fs::rename(&staged, &database)
        .with_context(|| format!("renaming {} to {}", staged.display(), database.display()))?;
    if let Some(lock) = lock {
        use sqlx::Connection as _;
        let _ = lock.close().await;
    }
    sync_dir(&database)?;
    private_database(&database)?;
    Ok(Report {
        path: database.clone(),
        bytes: std::fs::metadata(&database)
            .with_context(|| format!("reading {}", database.display()))?
            .len(),
        ledger_entries,
        previous,
    })
}

/// SQLite's exclusive lock on `database`, if it exists: `None` when there is no database yet,
/// an error naming the file when another connection (a running server, an admin command)
/// has it open.
async fn exclusive_lock(database: &Path) -> anyhow::Result<Option<sqlx::sqlite::SqliteConnection>> {
    use sqlx::ConnectOptions as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteLockingMode};
    if !database.exists() {
        return Ok(None);
    }
    let in_use = || {
        format!(
            "{} is in use (a running spellhost serve or another command has it open); stop it \
             and run restore again",
            database.display()
        )
    };
    let mut connection = SqliteConnectOptions::new()
        .filename(database)
        .locking_mode(SqliteLockingMode::Exclusive)
        .busy_timeout(std::time::Duration::ZERO)
        .connect()
        .await
        .with_context(|| format!("opening {}", database.display()))?;
    // In WAL mode every open connection holds a shared lock on the file; the exclusive one
    // is granted only when no other connection exists.
    let locked = async {
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut connection)
            .await?;
        sqlx::query("SELECT COUNT(*) FROM sqlite_master")
            .execute(&mut connection)
            .await?;
        sqlx::query("COMMIT").execute(&mut connection).await
    }
    .await;
    match locked {
        Ok(_) => Ok(Some(connection)),
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("5" | "6" | "517" | "262")) =>
        {
            anyhow::bail!(in_use())
        }
        Err(error) => Err(error).with_context(|| format!("locking {}", database.display())),
    }
}

/// Moves the database and its WAL/SHM files to `….pre-restore-<ms>` (kept together so the
/// old database can still be opened). Returns the new name, or `None` if there was nothing.
fn move_aside(database: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !database.exists() {
        return Ok(None);
    }
    let aside = with_suffix(database, &format!(".pre-restore-{}", now_ms()));
    for suffix in ["-wal", "-shm", ""] {
        let from = with_suffix(database, suffix);
        let to = with_suffix(&aside, suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("renaming {} to {}", from.display(), to.display()));
            }
        }
    }
    Ok(Some(aside))
}

fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut source =
        std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    std::io::copy(&mut source, &mut target)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    target
        .sync_all()
        .with_context(|| format!("syncing {}", to.display()))
}

fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(path, suffix));
    }
}

/// Makes a written file durable, and its name in the directory.
fn sync(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", path.display()))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))
}
