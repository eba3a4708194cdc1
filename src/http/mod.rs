//! The HTTP edge (axum). Handlers are thin: extract, parse into domain types, call one domain
//! function, map the result. All routes are in `router.rs`.

mod billing;
mod budgets;
mod cast;
mod casts;
pub mod client_ip;
mod extract;
pub mod hygiene;
mod idempotency;
mod keys;
mod ledger;
mod middleware;
pub mod oauth;
mod openapi;
mod ops;
pub mod rate_limit;
mod router;
pub mod server;
mod signers;
mod spells;
mod users;

pub use openapi::json as openapi_json;
pub use rate_limit::RateLimits;
pub use router::{metrics_router, router};
