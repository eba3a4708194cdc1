//! Known vulnerabilities: an SBOM's components (by package URL) matched against an offline
//! advisory database in OSV format — a directory of OSV JSON records that the operator keeps
//! fresh (`SPELLHOST_ADVISORY_DB`). Nothing is fetched: the directory is read at start-up and
//! again when it changes (see [`AdvisoryDb::fingerprint`]).
//!
//! Matching follows the OSV schema: `affected[].package` (ecosystem and name, or its purl), then
//! the exact `versions` list or `SEMVER`/`ECOSYSTEM` ranges of `introduced`/`fixed`/
//! `last_affected` events (evaluated in version order; versions compared as semver, leniently:
//! a leading `v` is dropped and a missing minor or patch is 0). `GIT` ranges name commits and
//! cannot be evaluated offline; they are ignored. Severity is `database_specific.severity`
//! (GitHub's LOW/MODERATE/HIGH/CRITICAL), else the highest CVSS v3 base score among
//! `severity[]` (computed here, CVSS v3.1 §7), else unknown — an unknown severity never blocks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::GateError;
use super::sbom::{Component, SbomSummary};

/// The largest OSV record read, in bytes (real ones are a few KiB).
const RECORD_BYTES_MAX: u64 = 1024 * 1024;

/// The most records a database may hold: the whole of OSV's crates.io, npm and PyPI dumps fit.
const RECORDS_MAX: usize = 500_000;

/// How deep the directory is walked (OSV dumps are one directory per ecosystem).
const DEPTH_MAX: usize = 4;

/// How serious an advisory is, in CVSS v3's qualitative scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Severity::Low),
            "medium" | "moderate" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            _ => Err(format!(
                "{text:?} is not a severity: low, medium, high or critical"
            )),
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// Why a database could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct AdvisoryError {
    pub path: PathBuf,
    pub message: String,
}

/// A loaded database.
pub struct AdvisoryDb {
    snapshot: Snapshot,
    /// Advisories by (ecosystem, normalized package name).
    by_package: HashMap<(String, String), Vec<usize>>,
    advisories: Vec<Advisory>,
}

/// Which database a check used: its content digest, size, and the newest `modified` in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `sha256:` and the first 16 hex digits of the hash over every record file (path and bytes).
    pub id: String,
    pub advisories: usize,
    /// The newest `modified` time among the records (RFC 3339), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
}

struct Advisory {
    id: String,
    aliases: Vec<String>,
    severity: Option<Severity>,
    affected: Vec<Affected>,
}

struct Affected {
    key: (String, String),
    versions: Vec<String>,
    ranges: Vec<Vec<Event>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Introduced(Option<semver::Version>),
    Fixed(semver::Version),
    LastAffected(semver::Version),
}

impl Event {
    /// Where the event sits in version order (`introduced: "0"` first).
    fn at(&self) -> Option<&semver::Version> {
        match self {
            Event::Introduced(version) => version.as_ref(),
            Event::Fixed(version) | Event::LastAffected(version) => Some(version),
        }
    }
}

/// An OSV record, as much of it as the check reads.
#[derive(Deserialize)]
struct OsvRecord {
    id: String,
    modified: Option<String>,
    withdrawn: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<OsvAffected>,
    database_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct OsvAffected {
    package: Option<OsvPackage>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    ranges: Vec<OsvRange>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
}

#[derive(Deserialize)]
struct OsvPackage {
    ecosystem: Option<String>,
    name: Option<String>,
    purl: Option<String>,
}

#[derive(Deserialize)]
struct OsvRange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// What the directory looks like, cheaply (names, sizes, modification times): a change of any
/// record changes it, so a poll can tell when to reload without reading the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(u64, u64, u128);

impl AdvisoryDb {
    /// Reads every `*.json` record under `dir`. A record that is unreadable or not OSV is an
    /// error naming its file: a half-read database would silently miss advisories.
    pub fn load(dir: &Path) -> Result<Self, AdvisoryError> {
        let files = record_files(dir)?;
        let mut hasher = Sha256::new();
        let mut advisories = Vec::new();
        let mut modified: Option<String> = None;
        for path in &files {
            let failed = |message: String| AdvisoryError {
                path: path.clone(),
                message,
            };
            let bytes = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
            let relative = path.strip_prefix(dir).unwrap_or(path);
            hasher.update(relative.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(&bytes);
            let record: OsvRecord = serde_json::from_slice(&bytes)
                .map_err(|e| failed(format!("not an OSV record: {e}")))?;
            if record.withdrawn.is_some() {
                continue;
            }
            if let Some(time) = &record.modified
                && modified.as_ref().is_none_or(|newest| time > newest)
            {
                modified = Some(time.clone());
            }
            advisories.push(Advisory::from_record(record));
        }
        let mut by_package: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (index, advisory) in advisories.iter().enumerate() {
            for affected in &advisory.affected {
                let entry = by_package.entry(affected.key.clone()).or_default();
                if entry.last() != Some(&index) {
                    entry.push(index);
                }
            }
        }
        Ok(AdvisoryDb {
            snapshot: Snapshot {
                id: format!("sha256:{}", &hex::encode(hasher.finalize())[..16]),
                advisories: advisories.len(),
                modified,
            },
            by_package,
            advisories,
        })
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The directory's [`Fingerprint`].
    pub fn fingerprint(dir: &Path) -> Result<Fingerprint, AdvisoryError> {
        let files = record_files(dir)?;
        let (mut bytes, mut newest) = (0u64, 0u128);
        for path in &files {
            let metadata = std::fs::metadata(path).map_err(|e| AdvisoryError {
                path: path.clone(),
                message: e.to_string(),
            })?;
            bytes += metadata.len();
            let at = metadata
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            newest = newest.max(at);
        }
        Ok(Fingerprint(files.len() as u64, bytes, newest))
    }
}

/// Every `*.json` file under `dir` (at most [`DEPTH_MAX`] deep), sorted, each at most
/// [`RECORD_BYTES_MAX`].
fn record_files(dir: &Path) -> Result<Vec<PathBuf>, AdvisoryError> {
    let mut files = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    while let Some((at, depth)) = pending.pop() {
        let failed = |message: String| AdvisoryError {
            path: at.clone(),
            message,
        };
        let entries = std::fs::read_dir(&at).map_err(|e| failed(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| failed(e.to_string()))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| failed(e.to_string()))?;
            if kind.is_dir() && depth < DEPTH_MAX {
                pending.push((path, depth + 1));
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "json") {
                let size = entry.metadata().map_err(|e| failed(e.to_string()))?.len();
                if size > RECORD_BYTES_MAX {
                    return Err(AdvisoryError {
                        path,
                        message: format!("larger than {RECORD_BYTES_MAX} bytes"),
                    });
                }
                files.push(path);
                if files.len() > RECORDS_MAX {
                    return Err(failed(format!("more than {RECORDS_MAX} records")));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

impl Advisory {
    fn from_record(record: OsvRecord) -> Self {
        let named = record
            .database_specific
            .as_ref()
            .and_then(|specific| specific.get("severity"))
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse::<Severity>().ok());
        let scored = record
            .severity
            .iter()
            .chain(record.affected.iter().flat_map(|a| a.severity.iter()))
            .filter(|s| s.kind == "CVSS_V3")
            .filter_map(|s| cvss3_base_score(&s.score))
            .max()
            .map(qualitative);
        let affected = record
            .affected
            .into_iter()
            .filter_map(|affected| {
                let package = affected.package?;
                let key = match (&package.ecosystem, &package.name, &package.purl) {
                    (Some(ecosystem), Some(name), _) => package_key(ecosystem, name),
                    (_, _, Some(purl)) => Purl::parse(purl)?.key()?,
                    _ => return None,
                };
                let ranges = affected
                    .ranges
                    .iter()
                    .filter(|range| range.kind == "SEMVER" || range.kind == "ECOSYSTEM")
                    .map(|range| range.events.iter().filter_map(event).collect())
                    .collect();
                Some(Affected {
                    key,
                    versions: affected.versions,
                    ranges,
                })
            })
            .collect();
        Advisory {
            id: record.id,
            aliases: record.aliases,
            severity: named.or(scored.flatten()),
            affected,
        }
    }
}

/// One OSV range event; `limit` (for git ranges) and unparseable versions are dropped.
fn event(map: &serde_json::Map<String, serde_json::Value>) -> Option<Event> {
    let (kind, value) = map.iter().next()?;
    let value = value.as_str()?;
    match kind.as_str() {
        "introduced" if value == "0" => Some(Event::Introduced(None)),
        "introduced" => Some(Event::Introduced(Some(lenient_version(value)?))),
        "fixed" => Some(Event::Fixed(lenient_version(value)?)),
        "last_affected" => Some(Event::LastAffected(lenient_version(value)?)),
        _ => None,
    }
}

/// A version as semver: a leading `v` dropped, a missing minor or patch taken as 0.
fn lenient_version(text: &str) -> Option<semver::Version> {
    let text = text.trim().trim_start_matches(['v', 'V']);
    if let Ok(version) = semver::Version::parse(text) {
        return Some(version);
    }
    let split = text.find(['-', '+']).unwrap_or(text.len());
    let (core, rest) = text.split_at(split);
    let padded = match core.split('.').count() {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

/// Whether `version` falls in a range: the last event at or below it decides (OSV's algorithm).
fn in_range(events: &[Event], version: &semver::Version) -> bool {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by(|a, b| a.at().cmp(&b.at()));
    let mut affected = false;
    for event in sorted {
        match event {
            Event::Introduced(None) => affected = true,
            Event::Introduced(Some(at)) if version >= at => affected = true,
            Event::Fixed(at) if version >= at => affected = false,
            Event::LastAffected(at) if version > at => affected = false,
            _ => {}
        }
    }
    affected
}

/// The OSV ecosystem and the package name as OSV writes it, normalized for comparison.
fn package_key(ecosystem: &str, name: &str) -> (String, String) {
    // `Debian:11`, `Alpine:v3.18`…: the release does not matter for the package's identity here.
    let ecosystem = ecosystem.split(':').next().unwrap_or(ecosystem).to_owned();
    let name = match ecosystem.as_str() {
        // PEP 503 normalization.
        "PyPI" => {
            let mut out = String::new();
            for c in name.chars() {
                if matches!(c, '-' | '_' | '.') {
                    if !out.ends_with('-') {
                        out.push('-');
                    }
                } else {
                    out.push(c.to_ascii_lowercase());
                }
            }
            out
        }
        "NuGet" | "Packagist" => name.to_ascii_lowercase(),
        _ => name.to_owned(),
    };
    (ecosystem, name)
}

/// A package URL (`pkg:type/namespace/name@version?qualifiers#subpath`), as far as matching
/// needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Purl {
    kind: String,
    namespace: Option<String>,
    name: String,
    version: Option<String>,
}

impl Purl {
    fn parse(text: &str) -> Option<Purl> {
        let rest = text.strip_prefix("pkg:")?.trim_start_matches('/');
        let rest = rest.split('#').next()?;
        let rest = rest.split('?').next()?;
        let (kind, path) = rest.split_once('/')?;
        let (path, version) = match path.rsplit_once('@') {
            Some((path, version)) if !version.contains('/') && !path.is_empty() => {
                (path, Some(percent_decode(version)))
            }
            _ => (path, None),
        };
        let mut segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let name = segments.pop()?;
        Some(Purl {
            kind: kind.to_ascii_lowercase(),
            namespace: (!segments.is_empty()).then(|| segments.join("/")),
            name,
            version,
        })
    }

    /// The OSV (ecosystem, name) of this package; `None` for types OSV has no ecosystem for.
    fn key(&self) -> Option<(String, String)> {
        let joined = |separator: &str| match &self.namespace {
            Some(namespace) => format!("{namespace}{separator}{}", self.name),
            None => self.name.clone(),
        };
        let (ecosystem, name) = match self.kind.as_str() {
            "cargo" => ("crates.io", self.name.clone()),
            "npm" => ("npm", joined("/")),
            "pypi" => ("PyPI", self.name.clone()),
            "maven" => ("Maven", joined(":")),
            "golang" => ("Go", joined("/")),
            "gem" => ("RubyGems", self.name.clone()),
            "nuget" => ("NuGet", self.name.clone()),
            "composer" => ("Packagist", joined("/")),
            "hex" => ("Hex", self.name.clone()),
            "pub" => ("Pub", self.name.clone()),
            "swift" => ("SwiftURL", joined("/")),
            _ => return None,
        };
        Some(package_key(ecosystem, &name))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The database a server checks against, reloaded when its directory changes.
pub struct Advisories {
    dir: Option<PathBuf>,
    severity_min: Severity,
    current: std::sync::RwLock<Option<(std::sync::Arc<AdvisoryDb>, Fingerprint)>>,
}

impl Advisories {
    /// Loads the configured directory now (an unreadable or invalid one is an error naming the
    /// file); no directory: no database, and every check says so.
    pub fn open(dir: Option<PathBuf>, severity_min: Severity) -> Result<Self, AdvisoryError> {
        let current = match &dir {
            Some(dir) => {
                let fingerprint = AdvisoryDb::fingerprint(dir)?;
                Some((std::sync::Arc::new(AdvisoryDb::load(dir)?), fingerprint))
            }
            None => None,
        };
        Ok(Advisories {
            dir,
            severity_min,
            current: std::sync::RwLock::new(current),
        })
    }

    /// The database in force (`None` without one).
    pub fn current(&self) -> Option<std::sync::Arc<AdvisoryDb>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(db, _)| db.clone())
    }

    pub fn severity_min(&self) -> Severity {
        self.severity_min
    }

    /// Reloads the directory if it changed since the last load; `Ok(true)` when it did. On an
    /// error the database in force stays (a half-written update must not empty it). Blocking.
    pub fn refresh(&self) -> Result<bool, AdvisoryError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let fingerprint = AdvisoryDb::fingerprint(dir)?;
        let unchanged = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(_, known)| *known == fingerprint);
        if unchanged {
            return Ok(false);
        }
        let db = AdvisoryDb::load(dir)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Some((std::sync::Arc::new(db), fingerprint));
        Ok(true)
    }
}

/// What the advisory check found for one version, as the registry keeps and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisoryReport {
    /// The database the check used; `None`: no database is configured (nothing was checked).
    pub database: Option<Snapshot>,
    /// Advisories at or above this severity refuse a publish (unless VEX says not affected).
    pub severity_min: Severity,
    pub findings: Vec<Finding>,
}

/// One component affected by one advisory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub advisory: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The component's purl (or name@version).
    pub component: String,
    /// `None`: the advisory gives no severity this check can read.
    pub severity: Option<Severity>,
    /// The SBOM's VEX analysis state for this advisory and component, if it has one.
    pub vex: Option<String>,
}

/// The most findings kept per version (a listing stays readable; a refusal names the first).
const FINDINGS_MAX: usize = 200;

/// Matches `sbom`'s components against `db`. A component affected by an advisory at or above
/// `min`, without a VEX statement `not_affected` for that advisory (by id or alias) and that
/// component (by its `bom-ref` or purl), is refused with `vulnerable_component`.
pub fn check(
    db: Option<&AdvisoryDb>,
    sbom: &SbomSummary,
    min: Severity,
) -> Result<AdvisoryReport, GateError> {
    let Some(db) = db else {
        return Ok(AdvisoryReport {
            database: None,
            severity_min: min,
            findings: Vec::new(),
        });
    };
    let mut findings = Vec::new();
    let mut blocking: Option<Finding> = None;
    let mut blocking_count = 0usize;
    for component in &sbom.inventory {
        let Some(purl) = component.purl.as_deref().and_then(Purl::parse) else {
            continue;
        };
        let Some(key) = purl.key() else { continue };
        let Some(indexes) = db.by_package.get(&key) else {
            continue;
        };
        let Some(version) = purl.version.clone().or_else(|| component.version.clone()) else {
            continue;
        };
        for &index in indexes {
            let advisory = &db.advisories[index];
            if !advisory.affects(&key, &version) {
                continue;
            }
            let vex = vex_state(sbom, advisory, component);
            let finding = Finding {
                advisory: advisory.id.clone(),
                aliases: advisory.aliases.clone(),
                component: component.label(),
                severity: advisory.severity,
                vex: vex.clone(),
            };
            let blocks = advisory.severity.is_some_and(|s| s >= min)
                && vex.as_deref() != Some("not_affected");
            if blocks {
                blocking_count += 1;
                if blocking.is_none() {
                    blocking = Some(finding.clone());
                }
            }
            if findings.len() < FINDINGS_MAX {
                findings.push(finding);
            }
        }
    }
    if let Some(first) = blocking {
        let others = match blocking_count - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        return Err(GateError::VulnerableComponent {
            component: first.component,
            advisory: first.advisory,
            severity: first.severity.map_or_else(String::new, |s| s.to_string()),
            others,
        });
    }
    Ok(AdvisoryReport {
        database: Some(db.snapshot.clone()),
        severity_min: min,
        findings,
    })
}

impl Advisory {
    fn affects(&self, key: &(String, String), version: &str) -> bool {
        let parsed = lenient_version(version);
        self.affected
            .iter()
            .filter(|affected| affected.key == *key)
            .any(|affected| {
                affected.versions.iter().any(|v| v == version)
                    || parsed
                        .as_ref()
                        .is_some_and(|v| affected.ranges.iter().any(|r| in_range(r, v)))
            })
    }
}

/// The SBOM's VEX state for this advisory (by id or alias) and component (by `bom-ref` or purl).
fn vex_state(sbom: &SbomSummary, advisory: &Advisory, component: &Component) -> Option<String> {
    sbom.vex
        .iter()
        .filter(|statement| statement.id == advisory.id || advisory.aliases.contains(&statement.id))
        .find(|statement| {
            statement.refs.iter().any(|reference| {
                Some(reference) == component.bom_ref.as_ref()
                    || Some(reference) == component.purl.as_ref()
            })
        })
        .map(|statement| statement.state.clone())
}

/// The qualitative rating of a CVSS v3 base score (in tenths); `None` for 0.0.
fn qualitative(tenths: u8) -> Option<Severity> {
    match tenths {
        0 => None,
        1..=39 => Some(Severity::Low),
        40..=69 => Some(Severity::Medium),
        70..=89 => Some(Severity::High),
        _ => Some(Severity::Critical),
    }
}

/// The CVSS v3.0/v3.1 base score of a vector (`CVSS:3.1/AV:N/AC:L/…`), in tenths (0–100), as
/// the specification computes it (v3.1 §7.1 with its `Roundup`, v3.0's plain ceiling); `None`
/// for a vector that lacks a base metric or repeats one. Temporal and environmental metrics are
/// ignored: the base score is what advisories publish.
pub fn cvss3_base_score(vector: &str) -> Option<u8> {
    let (version, metrics) = vector.split_once('/')?;
    let v31 = match version {
        "CVSS:3.1" => true,
        "CVSS:3.0" => false,
        _ => return None,
    };
    let mut values: HashMap<&str, &str> = HashMap::new();
    for metric in metrics.split('/') {
        let (name, value) = metric.split_once(':')?;
        if values.insert(name, value).is_some() {
            return None;
        }
    }
    let changed = match *values.get("S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match *values.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *values.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*values.get("PR")?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *values.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |name: &str| -> Option<f64> {
        match *values.get(name)? {
            "H" => Some(0.56),
            "L" => Some(0.22),
            "N" => Some(0.0),
            _ => None,
        }
    };
    let (c, i, a) = (cia("C")?, cia("I")?, cia("A")?);
    let iss = 1.0 - (1.0 - c) * (1.0 - i) * (1.0 - a);
    let impact = if changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02f64).powi(15)
    } else {
        6.42 * iss
    };
    let exploitability = 8.22 * av * ac * pr * ui;
    if impact <= 0.0 {
        return Some(0);
    }
    let raw = if changed {
        (1.08 * (impact + exploitability)).min(10.0)
    } else {
        (impact + exploitability).min(10.0)
    };
    let tenths = if v31 {
        // v3.1 Roundup: the smallest one-decimal number ≥ the input, computed on integers so
        // that floating-point noise (4.000000001) does not round up.
        let scaled = (raw * 100_000.0).round() as u64;
        if scaled.is_multiple_of(10_000) {
            scaled / 10_000
        } else {
            scaled / 10_000 + 1
        }
    } else {
        (raw * 10.0).ceil() as u64
    };
    u8::try_from(tenths.min(100)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss3_base_scores_match_the_specifications_examples() {
        for (vector, tenths) in [
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 98),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 100),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 61),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 75),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N", 53),
            ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 88),
            ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 78),
            ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 98),
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0),
            // Temporal metrics do not change the base score.
            ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:U/RL:O", 98),
        ] {
            assert_eq!(cvss3_base_score(vector), Some(tenths), "{vector}");
        }
        for bad in [
            "CVSS:2.0/AV:N/AC:L/Au:N/C:P/I:P/A:P",
            "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H",
            "CVSS:3.1/AV:N/AV:L/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        ] {
            assert_eq!(cvss3_base_score(bad), None, "{bad}");
        }
        assert_eq!(qualitative(98), Some(Severity::Critical));
        assert_eq!(qualitative(70), Some(Severity::High));
        assert_eq!(qualitative(69), Some(Severity::Medium));
        assert_eq!(qualitative(39), Some(Severity::Low));
    }

    fn version(text: &str) -> semver::Version {
        lenient_version(text).expect("version")
    }

    #[test]
    fn ranges_are_evaluated_in_version_order_as_osv_defines_them() {
        let events = [
            Event::Fixed(version("1.2.0")),
            Event::Introduced(None),
            Event::Introduced(Some(version("2.0.0"))),
            Event::LastAffected(version("2.1.0")),
        ];
        for (v, affected) in [
            ("0.1.0", true),
            ("1.1.9", true),
            ("1.2.0", false),
            ("1.9.0", false),
            ("2.0.0", true),
            ("2.1.0", true),
            ("2.1.1", false),
            ("2.1.0-rc.1", true),
        ] {
            assert_eq!(in_range(&events, &version(v)), affected, "{v}");
        }
        assert_eq!(version("v1.2"), semver::Version::new(1, 2, 0));
        assert_eq!(version("3"), semver::Version::new(3, 0, 0));
        assert!(lenient_version("1.2.3.4").is_none());
    }

    #[test]
    fn a_reload_that_fails_keeps_the_database_in_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = |id: &str| {
            format!(
                r#"{{"id":"{id}","modified":"2026-01-01T00:00:00Z","affected":[{{"package":{{"ecosystem":"crates.io","name":"x"}},"versions":["1.0.0"]}}],"database_specific":{{"severity":"HIGH"}}}}"#
            )
        };
        std::fs::write(dir.path().join("a.json"), record("A-1")).expect("write");
        let advisories =
            Advisories::open(Some(dir.path().to_path_buf()), Severity::High).expect("opens");
        let first = advisories.current().expect("loaded").snapshot().clone();
        assert_eq!(first.advisories, 1);
        assert!(!advisories.refresh().expect("unchanged"), "nothing changed");
        std::fs::write(dir.path().join("b.json"), "{ half written").expect("write");
        let error = advisories.refresh().expect_err("broken record");
        assert!(error.path.ends_with("b.json"), "{error}");
        assert_eq!(advisories.current().expect("kept").snapshot(), &first);
        std::fs::write(dir.path().join("b.json"), record("B-1")).expect("write");
        assert!(advisories.refresh().expect("reloads"));
        let second = advisories.current().expect("loaded").snapshot().clone();
        assert_eq!(second.advisories, 2);
        assert_ne!(second.id, first.id);
    }

    #[test]
    fn package_urls_map_to_osv_ecosystems_and_names() {
        let key = |purl: &str| Purl::parse(purl).and_then(|p| p.key());
        assert_eq!(
            key("pkg:cargo/serde@1.0.0"),
            Some(("crates.io".into(), "serde".into()))
        );
        assert_eq!(
            key("pkg:npm/%40angular/core@16.0.0"),
            Some(("npm".into(), "@angular/core".into()))
        );
        assert_eq!(
            key("pkg:npm/@angular/core@16.0.0"),
            Some(("npm".into(), "@angular/core".into()))
        );
        assert_eq!(
            key("pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1?type=jar"),
            Some(("Maven".into(), "org.apache.logging.log4j:log4j-core".into()))
        );
        assert_eq!(
            key("pkg:pypi/Django_Rest.Framework@3.0"),
            Some(("PyPI".into(), "django-rest-framework".into()))
        );
        assert_eq!(
            key("pkg:golang/github.com/gin-gonic/gin@v1.9.0"),
            Some(("Go".into(), "github.com/gin-gonic/gin".into()))
        );
        assert_eq!(key("pkg:generic/thing@1"), None);
        assert_eq!(key("not a purl"), None);
        assert_eq!(
            Purl::parse("pkg:npm/%40angular/core@16.0.0#sub")
                .and_then(|p| p.version)
                .as_deref(),
            Some("16.0.0")
        );
        assert_eq!(
            package_key("PyPI", "Django_Rest.Framework"),
            ("PyPI".into(), "django-rest-framework".into())
        );
    }
}
