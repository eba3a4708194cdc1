//! One test binary for all black-box tests (one link step instead of one per file).

mod advisories;
mod app;
mod authz;
mod billing;
mod billing_recharge;
mod billing_recovery;
mod budgets;
mod fairness;
mod gate;
mod hardening;
mod helpers;
mod idempotency;
mod leases;
mod money;
mod openapi;
mod ops;
mod privacy;
mod process;
mod sandbox;
mod service;
mod sigstore;
mod sigstore_fake;
mod stripe_fake;
mod wall_pricing;
