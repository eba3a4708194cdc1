//! The data directory and the SQLite files are private to the service's user: the directory
//! 0700, the database and its WAL and shared-memory files 0600 (like `secret.key`). Every
//! file-system error at start-up names the path it is about.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::Config;

/// Only the owner may list or enter the data directory: it holds the server secret, the
/// database and the precompiled artifacts.
pub const DIR_MODE: u32 = 0o700;
/// Only the owner may read or write the database: it holds API-key hashes and the ledger.
/// SQLite gives the `-wal` and `-shm` files the mode of the database file.
pub const FILE_MODE: u32 = 0o600;

/// Creates (or tightens) the data directory and its `artifacts` folder, and for an SQLite
/// database creates the file 0600 before SQLite opens it, so that it and its WAL never exist
/// readable by others. Checks that SQLite will be able to write where it needs to.
pub fn prepare(config: &Config) -> anyhow::Result<()> {
    private_dir(&config.data_dir)?;
    private_dir(&config.data_dir.join("artifacts"))?;
    if let Some(database) = sqlite_file(&config.database_url) {
        private_database(&database)?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700, or removes the group and other bits
/// of an existing directory that we own (one that is not ours is left alone; a later write
/// in it fails with an error naming the path).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {
            tighten(dir, &metadata, DIR_MODE);
            Ok(())
        }
        Ok(_) => anyhow::bail!("{} exists and is not a directory", dir.display()),
        Err(error) if error.kind() == ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display())),
        Err(error) => Err(error).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Removes the group and other permission bits of `path` (never adds any).
fn tighten(path: &Path, metadata: &std::fs::Metadata, mode: u32) {
    let current = metadata.mode() & 0o777;
    let wanted = current & mode;
    if current == wanted {
        return;
    }
    match std::fs::set_permissions(path, Permissions::from_mode(wanted)) {
        Ok(()) => tracing::info!(path = %path.display(), from = format!("{current:o}"),
            to = format!("{wanted:o}"), "tightened permissions"),
        Err(error) => tracing::warn!(path = %path.display(), mode = format!("{current:o}"),
            error = %error, "cannot tighten permissions (not our file?)"),
    }
}

/// The database file of an SQLite URL (`sqlite://path`, `sqlite:path`, with or without a
/// query), or `None` for PostgreSQL and in-memory databases.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path.starts_with(":memory:") || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The database file: created 0600 if missing (its parent 0700 if missing too), tightened to
/// 0600 with its `-wal` and `-shm` files if it exists; it must be writable, and so must its
/// directory (SQLite creates the WAL beside it).
pub fn private_database(database: &Path) -> anyhow::Result<()> {
    let parent = database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.exists() {
        private_dir(parent)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(database)
    {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            let metadata = std::fs::metadata(database)
                .with_context(|| format!("reading {}", database.display()))?;
            anyhow::ensure!(
                metadata.is_file(),
                "{} exists and is not a file",
                database.display()
            );
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(database)
                .with_context(|| format!("opening {} for writing", database.display()))?;
            for path in [
                database.to_path_buf(),
                with_suffix(database, "-wal"),
                with_suffix(database, "-shm"),
            ] {
                if let Ok(metadata) = std::fs::metadata(&path) {
                    tighten(&path, &metadata, FILE_MODE);
                }
            }
        }
        Err(error) => {
            return Err(error).with_context(|| format!("creating {}", database.display()));
        }
    }
    let probe = parent.join(".spellhost-write-probe");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "{} is not writable; SQLite creates {} there",
                parent.display(),
                with_suffix(database, "-wal").display()
            )
        })
}

/// `path` with `suffix` appended to its file name (`spellhost.db` → `spellhost.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Identifies a file across renames: a database renamed or replaced under a running server
/// has a different identity (or none) at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let metadata = std::fs::metadata(path)?;
        Ok(FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file_and_others_none() {
        for (url, file) in [
            (
                "sqlite://./spellhost-data/spellhost.db",
                Some("./spellhost-data/spellhost.db"),
            ),
            (
                "sqlite:///data/spellhost.db?mode=rwc",
                Some("/data/spellhost.db"),
            ),
            ("sqlite:spellhost.db", Some("spellhost.db")),
            ("sqlite::memory:", None),
            ("sqlite://file.db?mode=memory", None),
            ("postgres://u@h/db", None),
        ] {
            assert_eq!(sqlite_file(url), file.map(PathBuf::from), "{url}");
        }
    }

    #[test]
    fn suffixes_go_on_the_file_name() {
        assert_eq!(
            with_suffix(Path::new("/data/spellhost.db"), "-wal"),
            PathBuf::from("/data/spellhost.db-wal")
        );
    }
}
