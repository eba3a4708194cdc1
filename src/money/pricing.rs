//! The price of fuel, and the inverse: how much fuel an amount of money buys.

use super::MicroUsd;

/// How casts are priced: a base fee plus fuel at a price per 10⁹ units, rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub price_per_billion_fuel_microusd: u64,
    pub cast_base_fee_microusd: u64,
}

const BILLION: u128 = 1_000_000_000;

impl Pricing {
    /// cost = base fee + ⌈fuel × price / 10⁹⌉, in integers (u128 so nothing overflows).
    pub fn cost(&self, fuel: u64) -> MicroUsd {
        let price = u128::from(self.price_per_billion_fuel_microusd);
        let fuel_cost = (u128::from(fuel) * price).div_ceil(BILLION);
        let total = fuel_cost + u128::from(self.cast_base_fee_microusd);
        MicroUsd::new(i64::try_from(total).unwrap_or(i64::MAX))
    }

    /// The most fuel whose cost (base fee included) fits in `available`; `None` when not even
    /// the base fee does.
    pub fn affordable_fuel(&self, available: MicroUsd) -> Option<u64> {
        let available = u128::try_from(available.get()).ok()?;
        let after_base = available.checked_sub(u128::from(self.cast_base_fee_microusd))?;
        let price = u128::from(self.price_per_billion_fuel_microusd);
        if price == 0 {
            return Some(u64::MAX);
        }
        // ⌈f × p / 10⁹⌉ ≤ a  ⇔  f × p ≤ a × 10⁹  ⇔  f ≤ ⌊a × 10⁹ / p⌋.
        let fuel = after_base * BILLION / price;
        Some(u64::try_from(fuel).unwrap_or(u64::MAX))
    }
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            price_per_billion_fuel_microusd: 100_000,
            cast_base_fee_microusd: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cost_rounds_fuel_up_and_adds_the_base_fee() {
        let pricing = Pricing::default();
        assert_eq!(pricing.cost(0), MicroUsd::new(1));
        assert_eq!(
            pricing.cost(1),
            MicroUsd::new(2),
            "any fuel costs at least 1 µ$"
        );
        assert_eq!(pricing.cost(10_000), MicroUsd::new(2));
        assert_eq!(pricing.cost(10_001), MicroUsd::new(3));
        assert_eq!(pricing.cost(1_000_000_000), MicroUsd::new(100_001));
    }

    #[test]
    fn nothing_is_affordable_below_the_base_fee() {
        let pricing = Pricing::default();
        assert_eq!(pricing.affordable_fuel(MicroUsd::new(0)), None);
        assert_eq!(pricing.affordable_fuel(MicroUsd::new(-5)), None);
        assert_eq!(pricing.affordable_fuel(MicroUsd::new(1)), Some(0));
    }

    proptest! {
        #[test]
        fn affordable_fuel_is_the_most_that_fits(
            available in 0i64..1_000_000_000_000,
            price in 1u64..10_000_000,
            base in 0u64..1000,
        ) {
            let pricing = Pricing { price_per_billion_fuel_microusd: price, cast_base_fee_microusd: base };
            let available = MicroUsd::new(available);
            if let Some(fuel) = pricing.affordable_fuel(available) {
                prop_assert!(pricing.cost(fuel) <= available);
                prop_assert!(pricing.cost(fuel + 1) > available);
            } else {
                prop_assert!(available.get() < base as i64);
            }
        }
    }
}
