//! Spells a client can discover and price: the catalog (`GET /v1/spells`), each version's
//! schemas and limits, and its usage statistics (from the fuel histogram the settlement batch
//! maintains; never a scan of casts).

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{Registry, RegistryError, VersionInfo, choose};
use crate::money::Pricing;
use crate::money::fuel_histogram::FuelHistogram;
use crate::sandbox::RunLimits;

/// Spells per catalog page when the client does not say.
pub const CATALOG_LIMIT_DEFAULT: u32 = 20;
/// Spells per catalog page at most: a page reads each spell's versions.
pub const CATALOG_LIMIT_MAX: u32 = 100;
/// The longest `q` accepted, in characters as sent (as JSON Schema's `maxLength` counts them,
/// so the OpenAPI document can state it): a name is at most 64, a phrase of a description
/// fits, and 100 characters are at most 400 bytes of pattern.
pub const QUERY_CHARS_MAX: usize = 100;

/// A catalog request, parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogQuery {
    owner: Option<String>,
    /// Lowercased, as matched.
    q: Option<String>,
    /// The last spell of the previous page: `(owner, name)`.
    after: Option<(String, String)>,
    limit: u32,
}

impl CatalogQuery {
    pub fn parse(
        owner: Option<String>,
        q: Option<String>,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<Self, RegistryError> {
        let invalid = |field, message: &str| RegistryError::Invalid {
            field,
            message: message.to_owned(),
        };
        let owner = owner.filter(|o| !o.is_empty());
        if owner
            .as_deref()
            .is_some_and(|o| !crate::auth::is_valid_handle(o))
        {
            return Err(invalid("owner", "not a user handle"));
        }
        if q.as_ref()
            .is_some_and(|q| q.chars().count() > QUERY_CHARS_MAX)
        {
            return Err(invalid("q", "longer than 100 characters"));
        }
        let q = q.map(|q| q.trim().to_lowercase()).filter(|q| !q.is_empty());
        let after = cursor
            .filter(|c| !c.is_empty())
            .map(|c| {
                decode_cursor(&c).ok_or_else(|| invalid("cursor", "not a cursor this server gave"))
            })
            .transpose()?;
        let limit = limit.unwrap_or(CATALOG_LIMIT_DEFAULT);
        if !(1..=CATALOG_LIMIT_MAX).contains(&limit) {
            return Err(invalid("limit", "must be between 1 and 100"));
        }
        Ok(CatalogQuery {
            owner,
            q,
            after,
            limit,
        })
    }
}

/// The opaque cursor: the last spell of a page, `owner/name`, base64url.
fn encode_cursor(owner: &str, name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{owner}/{name}"))
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (owner, name) = text.split_once('/')?;
    (crate::auth::is_valid_handle(owner) && crate::supply_chain::manifest::is_valid_name(name))
        .then(|| (owner.to_owned(), name.to_owned()))
}

/// A limit as a run gets it: the manifest's, capped by the host's maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = CatalogLimits)]
pub struct Limits {
    pub fuel_max: u64,
    pub wall_ms_max: u64,
    pub memory_bytes_max: u64,
    pub output_bytes_max: u64,
}

impl From<RunLimits> for Limits {
    fn from(limits: RunLimits) -> Self {
        Limits {
            fuel_max: limits.fuel,
            wall_ms_max: limits.wall_ms,
            memory_bytes_max: limits.memory_bytes,
            output_bytes_max: limits.output_bytes,
        }
    }
}

/// One spell of the catalog.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CatalogEntry {
    /// `owner/name`.
    pub spell: String,
    pub owner: String,
    pub name: String,
    /// The latest version's description (`""` when no version can be cast unpinned).
    pub description: String,
    /// The highest version that is neither a pre-release nor yanked: what an unpinned cast
    /// runs. `None` when every version is one or the other.
    pub latest_version: Option<String>,
    pub limits: Option<Limits>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CatalogPage {
    pub spells: Vec<CatalogEntry>,
    /// Give it back as `cursor` for the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// A version's usage statistics: the casts settled and the fuel they burned, by percentile
/// (each the upper bound of its histogram bucket, at most 12.5 % above the true figure), with
/// what that fuel costs at the current prices (base fee and fuel; blocked time, usually none,
/// is not counted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub casts: u64,
    pub fuel_p50: Option<u64>,
    pub fuel_p90: Option<u64>,
    pub fuel_p99: Option<u64>,
    pub cost_p50_microusd: Option<i64>,
    pub cost_p90_microusd: Option<i64>,
    pub cost_p99_microusd: Option<i64>,
}

impl Usage {
    pub fn of(histogram: &FuelHistogram, pricing: &Pricing) -> Self {
        let fuel = |per_mille| histogram.percentile(per_mille);
        let cost = |fuel: Option<u64>| fuel.map(|f| pricing.cost(f).get());
        let (p50, p90, p99) = (fuel(500), fuel(900), fuel(990));
        Usage {
            casts: histogram.casts(),
            fuel_p50: p50,
            fuel_p90: p90,
            fuel_p99: p99,
            cost_p50_microusd: cost(p50),
            cost_p90_microusd: cost(p90),
            cost_p99_microusd: cost(p99),
        }
    }
}

/// A version as `GET /v1/spells/{owner}/{name}` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionDetails {
    #[serde(flatten)]
    pub info: VersionInfo,
    pub description: String,
    pub limits: Limits,
    pub input_schema: Option<serde_json::Value>,
    pub output_schema: Option<serde_json::Value>,
    pub usage: Usage,
}

#[derive(sqlx::FromRow)]
struct SpellRow {
    owner: String,
    name: String,
}

#[derive(sqlx::FromRow)]
struct HistogramRow {
    version: String,
    bucket: i64,
    casts: i64,
}

impl Registry {
    /// A page of published spells, ordered by owner and name.
    pub async fn catalog(&self, query: &CatalogQuery) -> Result<CatalogPage, RegistryError> {
        let (after_owner, after_name) = query.after.clone().unwrap_or_default();
        // `%` and `_` in `q` match themselves.
        let pattern = query.q.as_deref().map_or_else(
            || "%".to_owned(),
            |q| {
                let escaped = q
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("%{escaped}%")
            },
        );
        // One more than the page: whether there is a next one.
        let rows: Vec<SpellRow> = sqlx::query_as(
            "SELECT u.handle AS owner, v.name AS name FROM spell_versions v \
             JOIN users u ON u.id = v.owner_id \
             WHERE (u.handle = $1 OR $2 = 0) \
             AND (u.handle > $3 OR (u.handle = $3 AND v.name > $4)) \
             AND (LOWER(v.name) LIKE $5 ESCAPE '\\' OR LOWER(COALESCE(v.description, '')) LIKE $5 ESCAPE '\\') \
             GROUP BY u.handle, v.name ORDER BY u.handle, v.name LIMIT $6",
        )
        .bind(query.owner.clone().unwrap_or_default())
        .bind(i64::from(query.owner.is_some()))
        .bind(&after_owner)
        .bind(&after_name)
        .bind(&pattern)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        let more = rows.len() > query.limit as usize;
        let mut spells = Vec::with_capacity(rows.len().min(query.limit as usize));
        for row in rows.into_iter().take(query.limit as usize) {
            spells.push(self.entry(row).await?);
        }
        let next_cursor = more
            .then(|| spells.last().map(|e| encode_cursor(&e.owner, &e.name)))
            .flatten();
        Ok(CatalogPage {
            spells,
            next_cursor,
        })
    }

    /// A catalog entry: the spell's latest castable version, its description and limits.
    async fn entry(&self, row: SpellRow) -> Result<CatalogEntry, RegistryError> {
        let versions = self.version_rows(&row.owner, &row.name, false).await?;
        let parsed = versions.into_iter().filter_map(|v| {
            let version = semver::Version::parse(&v.version).ok()?;
            Some((version, v.yanked_at_ms.is_some(), v.id))
        });
        let (latest_version, description, limits) = match choose(None, parsed) {
            Ok((version, _, id)) => {
                let manifest = self.version_manifest(id).await?;
                let limits = self.sandbox.limits_for(&manifest.limits);
                (
                    Some(version.to_string()),
                    manifest.description.clone(),
                    Some(limits.into()),
                )
            }
            Err(_) => (None, String::new(), None),
        };
        Ok(CatalogEntry {
            spell: format!("{}/{}", row.owner, row.name),
            owner: row.owner,
            name: row.name,
            description,
            latest_version,
            limits,
        })
    }

    /// Every version of a spell, newest first, with its schemas, limits and usage statistics
    /// priced at `pricing`.
    pub async fn details(
        &self,
        owner: &str,
        name: &str,
        pricing: &Pricing,
    ) -> Result<Vec<VersionDetails>, RegistryError> {
        let versions = self.versions(owner, name).await?;
        let mut usage = self.usage(&format!("{owner}/{name}"), None).await?;
        let ids: BTreeMap<String, i64> = self
            .version_rows(owner, name, true)
            .await?
            .into_iter()
            .map(|row| (row.version, row.id))
            .collect();
        let mut details = Vec::with_capacity(versions.len());
        for info in versions {
            let id = *ids.get(&info.version).ok_or_else(|| {
                RegistryError::Internal(format!("version {} has no row", info.version))
            })?;
            let manifest = self.version_manifest(id).await?;
            let histogram = usage.remove(&info.version).unwrap_or_default();
            details.push(VersionDetails {
                description: manifest.description.clone(),
                limits: self.sandbox.limits_for(&manifest.limits).into(),
                input_schema: manifest.input_schema.as_ref().map(|s| s.json().clone()),
                output_schema: manifest.output_schema.as_ref().map(|s| s.json().clone()),
                usage: Usage::of(&histogram, pricing),
                info,
            });
        }
        Ok(details)
    }

    /// The fuel histograms of a spell's versions (`owner/name`), or of one version.
    pub async fn usage(
        &self,
        spell: &str,
        version: Option<&str>,
    ) -> Result<BTreeMap<String, FuelHistogram>, RegistryError> {
        let rows: Vec<HistogramRow> = sqlx::query_as(
            "SELECT version, bucket, casts FROM spell_fuel_histogram \
             WHERE spell = $1 AND (version = $2 OR $3 = 0)",
        )
        .bind(spell)
        .bind(version.unwrap_or_default())
        .bind(i64::from(version.is_some()))
        .fetch_all(self.db.reader())
        .await?;
        let mut histograms: BTreeMap<String, FuelHistogram> = BTreeMap::new();
        for row in rows {
            let (Ok(bucket), Ok(casts)) = (u32::try_from(row.bucket), u64::try_from(row.casts))
            else {
                return Err(RegistryError::Internal(format!(
                    "a histogram row of {spell}@{} is out of range",
                    row.version
                )));
            };
            histograms
                .entry(row.version)
                .or_default()
                .add(bucket, casts);
        }
        Ok(histograms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let cursor = encode_cursor("ada", "hello-2");
        assert_eq!(
            decode_cursor(&cursor),
            Some(("ada".into(), "hello-2".into()))
        );
        assert_eq!(decode_cursor("not base64!"), None);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("ada/Bad Name");
        assert_eq!(decode_cursor(&forged), None);
        let error = CatalogQuery::parse(None, None, Some("junk".into()), None).expect_err("cursor");
        assert!(error.to_string().contains("cursor"), "{error}");
    }

    #[test]
    fn queries_are_bounded_and_lowercased() {
        let query = CatalogQuery::parse(None, Some("  Greets ".into()), None, None).expect("q");
        assert_eq!(query.q.as_deref(), Some("greets"));
        assert_eq!(query.limit, CATALOG_LIMIT_DEFAULT);
        assert!(CatalogQuery::parse(None, Some("x".repeat(101)), None, None).is_err());
        assert!(CatalogQuery::parse(None, None, None, Some(0)).is_err());
        assert!(CatalogQuery::parse(None, None, None, Some(101)).is_err());
        assert!(CatalogQuery::parse(Some("Not A Handle".into()), None, None, None).is_err());
    }
}
