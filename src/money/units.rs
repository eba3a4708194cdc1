//! Money as integers: micro-dollars, never floats.

use serde::{Deserialize, Serialize};

/// An amount of money in micro-dollars (1 = $0.000001). Signed, because ledger entries are
/// credits and debits and a refund may take a balance below zero.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroUsd(i64);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    pub const fn new(value: i64) -> Self {
        MicroUsd(value)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    /// Whole cents, as Stripe counts USD: 1 cent = 10 000 µ$.
    pub fn from_cents(cents: i64) -> Option<Self> {
        cents.checked_mul(10_000).map(MicroUsd)
    }

    pub fn checked_add(self, other: MicroUsd) -> Option<MicroUsd> {
        self.0.checked_add(other.0).map(MicroUsd)
    }

    pub fn checked_sub(self, other: MicroUsd) -> Option<MicroUsd> {
        self.0.checked_sub(other.0).map(MicroUsd)
    }
}

impl std::fmt::Display for MicroUsd {
    /// Dollars with six decimals, e.g. `$1.000000`; for people, never parsed back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        write!(
            f,
            "{sign}${}.{:06}",
            magnitude / 1_000_000,
            magnitude % 1_000_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_dollars_with_six_decimals() {
        assert_eq!(MicroUsd::new(1_000_000).to_string(), "$1.000000");
        assert_eq!(MicroUsd::new(-1).to_string(), "-$0.000001");
        assert_eq!(
            MicroUsd::new(i64::MIN).to_string(),
            "-$9223372036854.775808"
        );
    }

    #[test]
    fn cents_convert_exactly_and_overflow_is_refused() {
        assert_eq!(MicroUsd::from_cents(500), Some(MicroUsd::new(5_000_000)));
        assert_eq!(MicroUsd::from_cents(i64::MAX), None);
    }
}
