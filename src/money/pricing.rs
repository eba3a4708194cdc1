//! The price of a cast — a base fee, fuel, and the time it was blocked in host calls — and
//! the inverse: how much fuel an amount of money buys.

use std::time::Duration;

use super::MicroUsd;

/// How casts are priced: a base fee, plus fuel at a price per 10⁹ units (rounded up), plus
/// every millisecond the run was blocked in host calls (rounded up) at a price per ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    pub price_per_billion_fuel_microusd: u64,
    pub cast_base_fee_microusd: u64,
    /// µ$ per millisecond a run spends blocked in host calls (`SPELLHOST_PRICE_MICROUSD_PER_WALL_MS`).
    /// Compute is priced by fuel; a run that sleeps instead holds its slot for nothing, so
    /// that time is priced too — only that time: the wall time of a computing run grows with
    /// its neighbours' load, and billing it would bill tenants for each other.
    pub price_microusd_per_wall_ms: u64,
}

/// The default price of a blocked millisecond: about what a millisecond of computing costs,
/// so that sleeping is no cheaper a way to hold the host than computing. Measured with the
/// `primes` example (`spellhost spell run spells/primes --input-json '{"below":3000000}'`, 1.58·10⁹
/// fuel): 3.0–7.1·10⁶ fuel per ms of its run on the 2-core development machine (the spread is
/// the machine's load; 7.1·10⁶ alone), i.e. 300–710 µ$ per ms at the default fuel price. 700
/// prices a blocked millisecond like a millisecond of a core the run has to itself.
pub const DEFAULT_PRICE_MICROUSD_PER_WALL_MS: u64 = 700;

const BILLION: u128 = 1_000_000_000;

/// What a cast costs, by component. `total()` is what is charged (`cost_microusd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub base: MicroUsd,
    pub fuel: MicroUsd,
    pub wall: MicroUsd,
}

impl Cost {
    pub fn total(&self) -> MicroUsd {
        let sum = self
            .base
            .get()
            .saturating_add(self.fuel.get())
            .saturating_add(self.wall.get());
        MicroUsd::new(sum)
    }

    /// This cost cut down to `amount` (a late settle that only part of the cost could be
    /// charged for): the base fee is charged first, then fuel, then blocked time.
    pub fn at_most(self, amount: MicroUsd) -> Cost {
        let mut left = amount.get().max(0);
        let mut take = |part: MicroUsd| {
            let taken = part.get().clamp(0, left);
            left -= taken;
            MicroUsd::new(taken)
        };
        let cut = Cost {
            base: take(self.base),
            fuel: take(self.fuel),
            wall: take(self.wall),
        };
        debug_assert!(cut.total() <= self.total() && cut.total() <= amount.max(MicroUsd::ZERO));
        cut
    }
}

impl Pricing {
    /// Blocked time as billed: whole milliseconds, rounded up.
    pub fn billed_ms(blocked: Duration) -> u64 {
        u64::try_from(blocked.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// `blocked_ms × price`, in integers (saturating: never wraps to a small charge).
    pub fn wall_cost(&self, blocked_ms: u64) -> MicroUsd {
        let cost = u128::from(blocked_ms) * u128::from(self.price_microusd_per_wall_ms);
        MicroUsd::new(i64::try_from(cost).unwrap_or(i64::MAX))
    }

    /// What a run that burned `fuel` and was blocked `blocked_ms` costs, by component.
    pub fn charge(&self, fuel: u64, blocked_ms: u64) -> Cost {
        let base = i64::try_from(self.cast_base_fee_microusd).unwrap_or(i64::MAX);
        Cost {
            base: MicroUsd::new(base),
            fuel: MicroUsd::new(self.cost(fuel).get().saturating_sub(base)),
            wall: self.wall_cost(blocked_ms),
        }
    }

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
            price_microusd_per_wall_ms: DEFAULT_PRICE_MICROUSD_PER_WALL_MS,
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

    #[test]
    fn blocked_time_is_billed_in_whole_milliseconds_rounded_up() {
        assert_eq!(Pricing::billed_ms(Duration::ZERO), 0);
        assert_eq!(Pricing::billed_ms(Duration::from_nanos(1)), 1);
        assert_eq!(Pricing::billed_ms(Duration::from_millis(7)), 7);
        assert_eq!(Pricing::billed_ms(Duration::from_micros(7_001)), 8);
        assert_eq!(Pricing::billed_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn the_charge_adds_base_fuel_and_blocked_time_and_never_overflows() {
        let pricing = Pricing {
            price_microusd_per_wall_ms: 3,
            ..Pricing::default()
        };
        let cost = pricing.charge(10_001, 5);
        assert_eq!(
            cost,
            Cost {
                base: MicroUsd::new(1),
                fuel: MicroUsd::new(2),
                wall: MicroUsd::new(15)
            }
        );
        assert_eq!(cost.total(), MicroUsd::new(18));
        assert_eq!(pricing.charge(0, 0).total(), MicroUsd::new(1));
        // Saturates at the largest amount instead of wrapping to a small one.
        assert_eq!(pricing.wall_cost(u64::MAX), MicroUsd::new(i64::MAX));
        assert_eq!(
            pricing.charge(u64::MAX, u64::MAX).total(),
            MicroUsd::new(i64::MAX)
        );
        let free = Pricing {
            price_microusd_per_wall_ms: 0,
            ..pricing
        };
        assert_eq!(free.charge(0, u64::MAX).wall, MicroUsd::ZERO);
    }

    #[test]
    fn a_cost_cut_down_charges_the_base_then_fuel_then_blocked_time() {
        let cost = Cost {
            base: MicroUsd::new(1),
            fuel: MicroUsd::new(10),
            wall: MicroUsd::new(100),
        };
        assert_eq!(cost.at_most(MicroUsd::new(111)), cost);
        assert_eq!(cost.at_most(MicroUsd::new(1_000)), cost);
        let cut = cost.at_most(MicroUsd::new(50));
        assert_eq!(
            (cut.base.get(), cut.fuel.get(), cut.wall.get()),
            (1, 10, 39)
        );
        let cut = cost.at_most(MicroUsd::new(5));
        assert_eq!((cut.base.get(), cut.fuel.get(), cut.wall.get()), (1, 4, 0));
        assert_eq!(cost.at_most(MicroUsd::new(-3)), Cost::default());
    }

    proptest! {
        #[test]
        fn affordable_fuel_is_the_most_that_fits(
            available in 0i64..1_000_000_000_000,
            price in 1u64..10_000_000,
            base in 0u64..1000,
        ) {
            let pricing = Pricing { price_per_billion_fuel_microusd: price, cast_base_fee_microusd: base, price_microusd_per_wall_ms: 0 };
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
