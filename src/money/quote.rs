//! The 402 rule, as pure functions: what a cast may burn and cost at worst under its caps, and
//! whether the balance and every budget that applies can hold that worst case. A cast is held
//! at its worst case or refused before anything runs, so neither the balance nor a budget ever
//! binds in the middle of a run. The worst case is the cost of the fuel cap plus the blocked
//! time a run could be billed: all of its wall limit, if the module can block at all.

use super::budgets::Budget;
use super::{MicroUsd, Pricing};

/// The caps a cast runs under, before money is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// The manifest's `fuel_max`, capped by the host's maximum.
    pub spell_fuel_max: u64,
    /// The caller's `max_fuel`.
    pub caller_fuel_max: Option<u64>,
    /// The caller's `max_cost_microusd`.
    pub caller_cost_max: Option<MicroUsd>,
    /// The most time the run can be blocked in host calls: its wall limit, or 0 for a module
    /// that cannot block (it does not import `poll_oneoff`).
    pub blocked_ms_max: u64,
}

/// What decided a run's fuel cap. A run that exhausts its cap ends `fuel_exhausted` (422)
/// either way; this says whose cap it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuelBound {
    /// The caller's `max_fuel` or `max_cost_microusd`.
    Caller,
    /// The manifest's `fuel_max` or the host's maximum.
    Spell,
}

/// The fuel cap and blocked-time budget of a cast and its worst-case cost: what is held before
/// it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub fuel_cap: u64,
    pub bound: FuelBound,
    /// The most blocked time the run may be billed (and may spend): the caps' `blocked_ms_max`,
    /// unless the caller's `max_cost_microusd` lowered it.
    pub blocked_ms_max: u64,
    pub worst_case: MicroUsd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("max_cost_microusd is below the cheapest possible cast ({minimum})")]
    CostCapBelowMinimum { minimum: MicroUsd },
}

/// The smallest of the caps, and what it costs at worst.
///
/// When the caller's `max_cost_microusd` cannot pay for the fuel cap and the whole wall limit
/// of blocked time, both shrink in proportion to their worst-case costs, so that the run keeps
/// the shape its limits give it (the wall limit itself stays: computing is not billed by
/// time). A cheap computing cast then still runs, with little or no time it may spend asleep.
pub fn plan(caps: Caps, pricing: &Pricing) -> Result<Plan, PlanError> {
    let (mut fuel_cap, mut bound) = (caps.spell_fuel_max, FuelBound::Spell);
    if let Some(caller) = caps.caller_fuel_max
        && caller < fuel_cap
    {
        (fuel_cap, bound) = (caller, FuelBound::Caller);
    }
    let mut blocked_ms_max = caps.blocked_ms_max;
    if let Some(cost_max) = caps.caller_cost_max {
        let full = pricing.charge(fuel_cap, blocked_ms_max);
        if full.total() > cost_max {
            blocked_ms_max = blocked_share(full, cost_max, blocked_ms_max);
        }
        let minimum = pricing.cost(fuel_cap.min(1));
        let affordable = cost_max
            .checked_sub(pricing.wall_cost(blocked_ms_max))
            .and_then(|left| pricing.affordable_fuel(left))
            .filter(|&fuel| fuel >= fuel_cap.min(1))
            .ok_or(PlanError::CostCapBelowMinimum { minimum })?;
        if affordable < fuel_cap {
            (fuel_cap, bound) = (affordable, FuelBound::Caller);
        }
    }
    let worst_case = pricing.charge(fuel_cap, blocked_ms_max).total();
    debug_assert!(caps.caller_cost_max.is_none_or(|max| worst_case <= max));
    debug_assert!(blocked_ms_max <= caps.blocked_ms_max);
    Ok(Plan {
        fuel_cap,
        bound,
        blocked_ms_max,
        worst_case,
    })
}

/// The blocked time a cost cap leaves to a run whose worst case `full` (for `blocked_ms`)
/// exceeds it: the wall part's share of what is left after the base fee, rounded down.
fn blocked_share(full: super::Cost, cost_max: MicroUsd, blocked_ms: u64) -> u64 {
    let parts = u128::try_from(full.fuel.get().saturating_add(full.wall.get())).unwrap_or(0);
    if full.wall.get() <= 0 || parts == 0 {
        // Blocked time is free: nothing to share.
        return blocked_ms;
    }
    let left = u128::try_from(cost_max.get().saturating_sub(full.base.get())).unwrap_or(0);
    let share = u128::from(blocked_ms) * left / parts;
    u64::try_from(share).unwrap_or(blocked_ms).min(blocked_ms)
}

/// What could not hold a cast's worst case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    Balance,
    Budget(Budget),
}

/// A cast refused before it ran: the quote a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The worst case that had to be held.
    pub required: MicroUsd,
    /// What the binding pool could hold.
    pub available: MicroUsd,
    /// The largest `max_fuel` that would fit everything that applies, if a minimal run
    /// (one unit of fuel) fits at all.
    pub affordable_max_fuel: Option<u64>,
    pub binding: Binding,
    /// Money of the binding pool that other instances hold leased for their casts; it comes
    /// back when they return or their leases expire, at the latest at `leases_return_by_ms`.
    pub leased_elsewhere: MicroUsd,
    pub leases_return_by_ms: Option<i64>,
}

/// Checks that the available balance and every budget's remaining amount can hold the
/// worst case; otherwise names the tightest of those that cannot.
pub fn check(
    plan: &Plan,
    balance_available: MicroUsd,
    budgets: &[Budget],
    pricing: &Pricing,
) -> Result<(), Box<Refusal>> {
    let mut tightest: Option<(MicroUsd, Binding)> = None;
    let mut least_available = balance_available;
    if balance_available < plan.worst_case {
        tightest = Some((balance_available, Binding::Balance));
    }
    for budget in budgets {
        let remaining = budget.remaining();
        least_available = least_available.min(remaining);
        // On a tie a budget binds rather than the balance: a top-up would not help.
        if remaining < plan.worst_case && tightest.as_ref().is_none_or(|(a, _)| remaining <= *a) {
            tightest = Some((remaining, Binding::Budget(budget.clone())));
        }
    }
    let Some((available, binding)) = tightest else {
        return Ok(());
    };
    // What is left for fuel once the blocked time is held: a smaller `max_fuel` cannot make
    // room for the wall part.
    let affordable_max_fuel = least_available
        .checked_sub(pricing.wall_cost(plan.blocked_ms_max))
        .and_then(|left| pricing.affordable_fuel(left))
        .map(|fuel| fuel.min(plan.fuel_cap))
        .filter(|&fuel| fuel >= 1);
    Err(Box::new(Refusal {
        required: plan.worst_case,
        available,
        affordable_max_fuel,
        binding,
        leased_elsewhere: MicroUsd::ZERO,
        leases_return_by_ms: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::budgets::{Period, Scope};

    fn caps(spell: u64, fuel: Option<u64>, cost: Option<i64>) -> Caps {
        Caps {
            spell_fuel_max: spell,
            caller_fuel_max: fuel,
            caller_cost_max: cost.map(MicroUsd::new),
            blocked_ms_max: 0,
        }
    }

    /// Fuel at the default price, blocked time at 10 µ$/ms.
    fn walled() -> Pricing {
        Pricing {
            price_microusd_per_wall_ms: 10,
            ..Pricing::default()
        }
    }

    fn budget(id: &str, hard: i64, used: i64, held: i64) -> Budget {
        Budget {
            id: id.into(),
            user_id: 1,
            scope: Scope::Account,
            period: Period::Month,
            hard: MicroUsd::new(hard),
            soft: None,
            used: MicroUsd::new(used),
            held: MicroUsd::new(held),
            period_start_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn the_smallest_cap_wins_and_names_its_bound() {
        let pricing = Pricing::default();
        let spell = plan(caps(100_000, None, None), &pricing).expect("plan");
        assert_eq!((spell.fuel_cap, spell.bound), (100_000, FuelBound::Spell));
        assert_eq!(spell.worst_case, pricing.cost(100_000));
        let fuel = plan(caps(100_000, Some(50), None), &pricing).expect("plan");
        assert_eq!((fuel.fuel_cap, fuel.bound), (50, FuelBound::Caller));
        // 11 µ$ buys the base fee and 10 µ$ of fuel: 100 000 fuel at the default price.
        let cost = plan(caps(1_000_000, Some(500_000), Some(11)), &pricing).expect("plan");
        assert_eq!((cost.fuel_cap, cost.bound), (100_000, FuelBound::Caller));
        assert_eq!(cost.worst_case, MicroUsd::new(11));
    }

    #[test]
    fn a_cost_cap_below_a_minimal_run_is_refused() {
        let pricing = Pricing::default();
        assert_eq!(
            plan(caps(100, None, Some(1)), &pricing),
            Err(PlanError::CostCapBelowMinimum {
                minimum: MicroUsd::new(2)
            })
        );
        assert!(plan(caps(100, None, Some(2)), &pricing).is_ok());
    }

    #[test]
    fn the_worst_case_must_fit_the_balance_and_every_budget() {
        let pricing = Pricing::default();
        let plan = plan(caps(1_000_000, None, None), &pricing).expect("plan"); // 101 µ$
        assert!(
            check(
                &plan,
                MicroUsd::new(101),
                &[budget("a", 200, 99, 0)],
                &pricing
            )
            .is_ok()
        );
        let short = check(&plan, MicroUsd::new(100), &[], &pricing).expect_err("balance");
        assert_eq!(short.binding, Binding::Balance);
        assert_eq!(
            (short.required, short.available),
            (MicroUsd::new(101), MicroUsd::new(100))
        );
        // 100 µ$ buys the base fee and 99 µ$ of fuel: 990 000 fuel.
        assert_eq!(short.affordable_max_fuel, Some(990_000));
        let tight = budget("b", 100, 40, 10); // 50 left
        let refused = check(
            &plan,
            MicroUsd::new(1_000),
            &[budget("a", 500, 0, 0), tight.clone()],
            &pricing,
        )
        .expect_err("budget");
        assert_eq!(refused.binding, Binding::Budget(tight));
        assert_eq!(refused.available, MicroUsd::new(50));
        assert_eq!(refused.affordable_max_fuel, Some(490_000));
    }

    #[test]
    fn the_worst_case_holds_the_whole_wall_limit_of_blocked_time() {
        let pricing = walled();
        let plan = plan(
            Caps {
                blocked_ms_max: 2_000,
                ..caps(1_000_000, None, None)
            },
            &pricing,
        )
        .expect("plan");
        // 101 µ$ of fuel cap and 20 000 µ$ of blocked time.
        assert_eq!(plan.blocked_ms_max, 2_000);
        assert_eq!(plan.worst_case, MicroUsd::new(20_101));
        // The quote's largest max_fuel leaves room for the blocked time: of 20 051 µ$,
        // 20 000 hold the wall part and 51 pay the base fee and 500 000 fuel.
        let refused = check(&plan, MicroUsd::new(20_051), &[], &pricing).expect_err("short");
        assert_eq!(refused.required, MicroUsd::new(20_101));
        assert_eq!(refused.affordable_max_fuel, Some(500_000));
        // No max_fuel helps when the wall part alone does not fit.
        let refused = check(&plan, MicroUsd::new(20_000), &[], &pricing).expect_err("short");
        assert_eq!(refused.affordable_max_fuel, None);
    }

    #[test]
    fn a_cost_cap_shrinks_fuel_and_blocked_time_in_proportion() {
        let pricing = walled();
        let capped = |cost: i64| {
            plan(
                Caps {
                    blocked_ms_max: 2_000,
                    ..caps(1_000_000, None, Some(cost))
                },
                &pricing,
            )
        };
        // Enough for everything: nothing shrinks.
        let roomy = capped(20_101).expect("plan");
        assert_eq!((roomy.fuel_cap, roomy.blocked_ms_max), (1_000_000, 2_000));
        assert_eq!(roomy.bound, FuelBound::Spell);
        // Half of what is left after the base fee: half the blocked time (1 000 ms, 10 000 µ$),
        // the rest buys fuel (50 µ$: 500 000).
        let half = capped(10_051).expect("plan");
        assert_eq!((half.fuel_cap, half.blocked_ms_max), (500_000, 1_000));
        assert_eq!(half.bound, FuelBound::Caller);
        assert_eq!(half.worst_case, MicroUsd::new(10_051));
        // A cap of a few µ$ still runs a short computing cast, with no time to sleep.
        let tiny = capped(5).expect("plan");
        assert_eq!((tiny.fuel_cap, tiny.blocked_ms_max), (40_000, 0));
        assert!(tiny.worst_case <= MicroUsd::new(5));
        assert_eq!(
            capped(1),
            Err(PlanError::CostCapBelowMinimum {
                minimum: MicroUsd::new(2)
            })
        );
        // Free blocked time is never shrunk.
        let free = plan(
            Caps {
                blocked_ms_max: 2_000,
                ..caps(1_000_000, None, Some(11))
            },
            &Pricing {
                price_microusd_per_wall_ms: 0,
                ..pricing
            },
        )
        .expect("plan");
        assert_eq!((free.fuel_cap, free.blocked_ms_max), (100_000, 2_000));
    }

    #[test]
    fn no_affordable_fuel_when_not_even_a_minimal_run_fits() {
        let pricing = Pricing::default();
        let plan = plan(caps(1_000, None, None), &pricing).expect("plan");
        let refused = check(&plan, MicroUsd::new(1), &[], &pricing).expect_err("poor");
        assert_eq!(refused.affordable_max_fuel, None);
        let overspent = budget("a", 100, 150, 0); // a lowered limit, already exceeded
        let refused = check(&plan, MicroUsd::new(1_000), &[overspent], &pricing).expect_err("over");
        assert_eq!(refused.available, MicroUsd::new(-50));
        assert_eq!(refused.affordable_max_fuel, None);
    }
}
