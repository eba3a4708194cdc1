//! The HTTP edge (axum). Handlers are thin: extract, parse into domain types, call one domain
//! function, map the result. All routes are in `router.rs`.

mod billing;
mod budgets;
mod cast;
mod extract;
mod idempotency;
mod keys;
mod ledger;
mod middleware;
mod ops;
mod router;
mod signers;
mod spells;
mod users;

pub use router::router;
