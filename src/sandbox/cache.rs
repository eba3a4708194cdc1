//! Compiled modules: an in-memory cache of `InstancePre` per digest, backed by precompiled
//! artifacts on disk that are authenticated with an HMAC before they are deserialized.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::{Engine, Module};

use crate::supply_chain::ModuleDigest;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation for artifact tags, versioned with the artifact layout.
const ARTIFACT_TAG_CONTEXT: &[u8] = b"spellhost precompiled artifact v1\0";
const TAG_BYTES: usize = 32;

/// Where a prepared module came from; reported for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleSource {
    /// Already in memory.
    Memory,
    /// Deserialized from an authenticated artifact on disk.
    Artifact,
    /// Compiled from verified bytes.
    Compiled,
}

/// Precompiled artifacts on disk, each `tag ‖ serialized module`, where
/// `tag = HMAC-SHA256(key, context ‖ digest ‖ serialized module)`.
pub struct ArtifactStore {
    dir: PathBuf,
    key: [u8; 32],
    rejected: AtomicU64,
}

impl ArtifactStore {
    pub fn new(dir: PathBuf, key: [u8; 32]) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ArtifactStore {
            dir,
            key,
            rejected: AtomicU64::new(0),
        })
    }

    pub fn path_for(&self, digest: &ModuleDigest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    /// How many artifacts were refused (bad tag, foreign key, not loadable) and discarded.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn tag(&self, digest: &ModuleDigest, serialized: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(ARTIFACT_TAG_CONTEXT);
        mac.update(digest.as_bytes());
        mac.update(serialized);
        mac
    }

    /// Loads the artifact for `digest` if it exists and its tag verifies; otherwise discards it.
    pub fn load(&self, engine: &Engine, digest: &ModuleDigest) -> Option<Module> {
        let path = self.path_for(digest);
        let file = std::fs::read(&path).ok()?;
        let authentic = file.len() > TAG_BYTES && {
            let (tag, serialized) = file.split_at(TAG_BYTES);
            self.tag(digest, serialized).verify_slice(tag).is_ok()
        };
        let module = if authentic {
            // SAFETY: `Module::deserialize` trusts its input to be a module serialized by this
            // wasmtime build. The bytes carry an HMAC under the server's secret key, binding
            // them to this module digest; only `store` below, which serializes modules we
            // compiled ourselves from verified bytes, produces such tags. Version or
            // configuration mismatches are still caught by wasmtime's own header check.
            #[expect(unsafe_code, reason = "authenticated precompiled artifacts")]
            unsafe {
                Module::deserialize(engine, &file[TAG_BYTES..]).ok()
            }
        } else {
            None
        };
        if module.is_none() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                spell.digest = %digest,
                "discarding a precompiled artifact that failed authentication or loading"
            );
            let _ = std::fs::remove_file(&path);
        }
        module
    }

    /// Writes the artifact atomically (temporary file, then rename).
    pub fn store(&self, digest: &ModuleDigest, module: &Module) {
        let result = (|| -> anyhow::Result<()> {
            let serialized = module.serialize()?;
            let tag = self.tag(digest, &serialized).finalize().into_bytes();
            let mut file = Vec::with_capacity(TAG_BYTES + serialized.len());
            file.extend_from_slice(&tag);
            file.extend_from_slice(&serialized);
            let path = self.path_for(digest);
            let temporary = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&temporary, &file)?;
            std::fs::rename(&temporary, &path)?;
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(spell.digest = %digest, error = %error, "could not write a precompiled artifact");
        }
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// A bounded map from digest to value with least-recently-used eviction.
pub struct LruMap<V> {
    capacity: usize,
    clock: AtomicU64,
    entries: Mutex<HashMap<ModuleDigest, (V, u64)>>,
}

impl<V: Clone> LruMap<V> {
    pub fn new(capacity: usize) -> Self {
        LruMap {
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, digest: &ModuleDigest) -> Option<V> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get_mut(digest).map(|(value, used)| {
            *used = now;
            value.clone()
        })
    }

    pub fn insert(&self, digest: ModuleDigest, value: V) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(digest, _)| *digest);
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(digest, (value, now));
    }

    #[cfg(test)]
    fn entry_count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_is_evicted_first() {
        let map = LruMap::new(2);
        let (a, b, c) = (
            ModuleDigest::of(b"a"),
            ModuleDigest::of(b"b"),
            ModuleDigest::of(b"c"),
        );
        map.insert(a, 1);
        map.insert(b, 2);
        assert_eq!(map.get(&a), Some(1));
        map.insert(c, 3);
        assert_eq!(map.get(&b), None, "b was least recently used");
        assert_eq!(map.get(&a), Some(1));
        assert_eq!(map.get(&c), Some(3));
        assert_eq!(map.entry_count(), 2);
    }
}
