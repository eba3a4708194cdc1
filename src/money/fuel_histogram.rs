//! Per-version fuel statistics: a log-linear histogram of the fuel settled casts burned,
//! maintained by the settlement batch (one upsert per batch) and read as percentiles.
//!
//! Buckets are exact below 8 fuel; above, each power of two is split into 8 equal buckets, so
//! a bucket's upper bound is at most 12.5 % above any value in it. All integer arithmetic: 496
//! buckets cover every `u64`.

use std::collections::BTreeMap;

/// Sub-buckets per power of two (a power of two itself).
const SUB_BUCKETS: u64 = 8;
/// log2 of [`SUB_BUCKETS`].
const SUB_BITS: u32 = 3;

/// The bucket of a fuel figure.
pub fn bucket_of(fuel: u64) -> u32 {
    if fuel < SUB_BUCKETS {
        return u32::try_from(fuel).unwrap_or(0);
    }
    let exponent = 63 - fuel.leading_zeros(); // ≥ SUB_BITS
    let sub = (fuel >> (exponent - SUB_BITS)) & (SUB_BUCKETS - 1);
    (exponent - SUB_BITS + 1) * SUB_BUCKETS as u32 + sub as u32
}

/// The smallest and largest fuel figure in a bucket (inclusive).
pub fn bounds_of(bucket: u32) -> (u64, u64) {
    let bucket = u64::from(bucket);
    if bucket < SUB_BUCKETS {
        return (bucket, bucket);
    }
    let shift = bucket / SUB_BUCKETS - 1;
    let sub = bucket % SUB_BUCKETS;
    let low = u128::from(SUB_BUCKETS + sub) << shift;
    let high = (u128::from(SUB_BUCKETS + sub + 1) << shift) - 1;
    let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    (clamp(low), clamp(high))
}

/// A version's histogram as read: bucket → casts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FuelHistogram {
    pub buckets: BTreeMap<u32, u64>,
}

impl FuelHistogram {
    pub fn add(&mut self, bucket: u32, casts: u64) {
        *self.buckets.entry(bucket).or_default() += casts;
    }

    pub fn casts(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The `per_mille`-th per-mille (500: the median): the upper bound of the bucket that holds
    /// it, so that a price quoted from it is never below what that share of casts burned.
    /// `None` without casts.
    pub fn percentile(&self, per_mille: u64) -> Option<u64> {
        let total = self.casts();
        if total == 0 {
            return None;
        }
        // The rank of the wanted cast, 1-based, rounded up (nearest-rank method).
        let rank = (u128::from(total) * u128::from(per_mille.min(1000)))
            .div_ceil(1000)
            .max(1);
        let mut seen = 0u128;
        for (&bucket, &casts) in &self.buckets {
            seen += u128::from(casts);
            if seen >= rank {
                return Some(bounds_of(bucket).1);
            }
        }
        debug_assert!(false, "the rank is within the total");
        None
    }
}

/// A batch's contribution: `(spell, version, bucket)` → casts, aggregated in memory so that
/// the batch writes it with one statement.
pub fn aggregate<'a>(
    casts: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
) -> BTreeMap<(String, String, u32), i64> {
    let mut rows = BTreeMap::new();
    for (spell, version, fuel) in casts {
        *rows
            .entry((spell.to_owned(), version.to_owned(), bucket_of(fuel)))
            .or_insert(0) += 1;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lies_within_its_buckets_bounds_and_buckets_are_ordered() {
        let mut last = None;
        for fuel in (0..5000u64).chain([
            8_083,
            1 << 20,
            (1 << 20) + 1,
            5_000_000_000,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ]) {
            let bucket = bucket_of(fuel);
            let (low, high) = bounds_of(bucket);
            assert!(
                low <= fuel && fuel <= high,
                "{fuel} in {bucket}: {low}..={high}"
            );
            // Within 12.5 % above.
            assert!(
                u128::from(high) * 8 <= u128::from(fuel) * 9 + 8,
                "{fuel}: {high}"
            );
            if let Some(previous) = last {
                assert!(bucket >= previous, "monotone at {fuel}");
            }
            last = Some(bucket);
        }
        assert_eq!(bucket_of(u64::MAX), 495);
        assert_eq!(bounds_of(7), (7, 7));
        assert_eq!(bounds_of(8), (8, 8));
        assert_eq!(bounds_of(16), (16, 17));
    }

    #[test]
    fn percentiles_are_the_upper_bounds_of_the_buckets_that_hold_them() {
        let mut histogram = FuelHistogram::default();
        assert_eq!(histogram.percentile(500), None);
        for fuel in 1..=100u64 {
            histogram.add(bucket_of(fuel * 1000), 1);
        }
        assert_eq!(histogram.casts(), 100);
        for (per_mille, exact) in [(500, 50_000u64), (900, 90_000), (990, 99_000)] {
            let quoted = histogram.percentile(per_mille).expect("casts");
            let (low, high) = bounds_of(bucket_of(exact));
            assert_eq!(quoted, high, "{per_mille}");
            assert!(low <= exact && exact <= quoted);
        }
        assert_eq!(
            histogram.percentile(1000),
            Some(bounds_of(bucket_of(100_000)).1)
        );
    }

    #[test]
    fn a_batch_is_aggregated_per_version_and_bucket() {
        let rows = aggregate([
            ("a/x", "1.0.0", 5),
            ("a/x", "1.0.0", 5),
            ("a/x", "1.1.0", 5),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[&("a/x".into(), "1.0.0".into(), 5)], 2);
    }
}
