//! Rate limits (GCRA, `governor`): per API key for authenticated requests
//! (`SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE`), per client address for everything else
//! (`SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE`), including attempts with a key that is not
//! verified yet — so a flood of bad keys is refused before it costs argon2 or the database.
//!
//! Every limited response carries `RateLimit-Limit` (requests per minute), `RateLimit-Remaining`
//! and `RateLimit-Reset` (seconds until the whole limit is available again); a refusal is
//! `429 rate_limited` with `Retry-After` (seconds until the next request is allowed).
//! `/healthz`, `/readyz`, `/metrics` and Stripe's webhook are not limited.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::client_ip::{self, ClientIp};
use crate::App;
use crate::config::HttpConfig;
use crate::error::{ApiError, Code};

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// How often keys whose limit is whole again are dropped from the limiters: their memory is
/// bounded by the keys seen in the last minute and this interval.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// The limiters of this process. Several instances each count their own requests: behind a
/// balancer spreading load over `n` instances, a client gets up to `n` times the limit.
pub struct RateLimits {
    keys: Option<Limiter<String>>,
    addresses: Option<Limiter<IpAddr>>,
    trusted_proxies: Vec<ipnet::IpNet>,
}

struct Limiter<K: std::hash::Hash + Eq + Clone> {
    limiter: Keyed<K>,
    per_minute: u32,
    /// How often one request comes back (a minute over the limit).
    interval: Duration,
}

/// One limiter's answer, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    limit: u32,
    remaining: u32,
    reset_seconds: u64,
    /// `Some` when refused: seconds until the next request is allowed.
    retry_after_seconds: Option<u64>,
    what: Limited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Key,
    Address,
}

impl Limited {
    fn as_str(self) -> &'static str {
        match self {
            Limited::Key => "key",
            Limited::Address => "address",
        }
    }
}

/// Marks a response whose rate limit was handled by the authenticated route's layer.
#[derive(Debug, Clone, Copy)]
pub struct Handled;

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn new(per_minute: u32) -> Option<Self> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
        Some(Limiter {
            limiter: RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>(),
            per_minute,
            interval: quota.replenish_interval(),
        })
    }

    fn check(&self, key: &K, what: Limited) -> Decision {
        let (interval, limit) = (self.interval, self.per_minute);
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    limit,
                    remaining,
                    reset_seconds: ceil_seconds(interval * limit.saturating_sub(remaining)),
                    retry_after_seconds: None,
                    what,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    limit,
                    remaining: 0,
                    reset_seconds: ceil_seconds(wait + interval * limit.saturating_sub(1)),
                    retry_after_seconds: Some(ceil_seconds(wait).max(1)),
                    what,
                }
            }
        }
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

impl RateLimits {
    pub fn new(config: &HttpConfig) -> Self {
        RateLimits {
            keys: Limiter::new(config.rate_limit_authenticated_per_minute),
            addresses: Limiter::new(config.rate_limit_anonymous_per_minute),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// Counts one request of an authenticated key; `None` when that limit is off.
    pub fn check_key(&self, key_id: &str) -> Option<Decision> {
        let limiter = self.keys.as_ref()?;
        Some(limiter.check(&key_id.to_owned(), Limited::Key))
    }

    /// Counts one request from an address without a verified key; `None` when that limit is
    /// off.
    pub fn check_address(&self, ip: IpAddr) -> Option<Decision> {
        let limiter = self.addresses.as_ref()?;
        Some(limiter.check(&client_ip::bucket(ip), Limited::Address))
    }

    /// Forgets keys whose limit is whole again (run every [`PRUNE_INTERVAL`]).
    pub fn prune(&self) {
        if let Some(keys) = &self.keys {
            keys.prune();
        }
        if let Some(addresses) = &self.addresses {
            addresses.prune();
        }
    }

    /// The client's address for a request from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip::resolve(peer, headers, &self.trusted_proxies)
    }
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.retry_after_seconds.is_none()
    }

    /// Sets the `RateLimit-*` headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("ratelimit-limit", u64::from(self.limit)),
            ("ratelimit-remaining", u64::from(self.remaining)),
            ("ratelimit-reset", self.reset_seconds),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }

    /// `429 rate_limited`, with `Retry-After` and the `RateLimit-*` headers; counted in
    /// `spellhost_rate_limited_total{limit}`.
    pub fn refusal(&self, app: &App) -> Response {
        app.metrics
            .rate_limited
            .with_label_values(&[self.what.as_str()])
            .inc();
        let retry_after = self.retry_after_seconds.unwrap_or(1);
        let message = match self.what {
            Limited::Key => format!(
                "this API key is over its limit of {} requests per minute; retry in {retry_after} s",
                self.limit
            ),
            Limited::Address => format!(
                "too many requests without a valid API key from your address (limit {} per minute); retry in {retry_after} s",
                self.limit
            ),
        };
        let mut response = ApiError::new(Code::RateLimited, message)
            .with("limit", self.what.as_str())
            .retry_after(u32::try_from(retry_after).unwrap_or(u32::MAX))
            .into_response();
        self.apply(response.headers_mut());
        response
    }
}

/// Paths never limited: probes, scrapes, and Stripe's signed webhooks (Stripe sends bursts
/// from a few addresses, and a refused event would delay a customer's credit).
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/webhooks/stripe"
    )
}

/// The outer layer: resolves the client's address (for every later layer, as [`ClientIp`]),
/// and limits requests without credentials by it. Requests with credentials are limited by
/// the authenticated route's layer ([`super::middleware::authorize`]): by their key once
/// verified, by their address before. Those that reach no such route (404, 405) count
/// against their address here, afterwards.
pub async fn limit(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let ip = match peer {
        Some(peer) => app.rate_limits.client_ip(peer, request.headers()),
        None => IpAddr::from([0, 0, 0, 0]),
    };
    request.extensions_mut().insert(ClientIp(ip));
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    if !super::oauth::has_credentials(request.headers()) {
        let decision = app.rate_limits.check_address(ip);
        if let Some(decision) = decision.filter(|d| !d.allowed()) {
            return decision.refusal(&app);
        }
        let mut response = next.run(request).await;
        if let Some(decision) = decision {
            decision.apply(response.headers_mut());
        }
        return response;
    }
    let mut response = next.run(request).await;
    if response.extensions().get::<Handled>().is_none()
        && let Some(decision) = app.rate_limits.check_address(ip)
    {
        if !decision.allowed() {
            return decision.refusal(&app);
        }
        decision.apply(response.headers_mut());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(authenticated: u32, anonymous: u32) -> RateLimits {
        let mut config = crate::config::Config::from_vars(&[])
            .expect("defaults")
            .http;
        config.rate_limit_authenticated_per_minute = authenticated;
        config.rate_limit_anonymous_per_minute = anonymous;
        RateLimits::new(&config)
    }

    #[test]
    fn a_key_gets_its_limit_then_a_refusal_with_a_retry_time() {
        let limits = limits(3, 0);
        let seen: Vec<Decision> = (0..4)
            .map(|_| limits.check_key("k1").expect("on"))
            .collect();
        assert_eq!(
            seen.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0]
        );
        assert!(seen[..3].iter().all(Decision::allowed));
        let refused = seen[3];
        assert!(!refused.allowed());
        // 3 per minute: one comes back every 20 s, the whole limit within a minute.
        let retry = refused.retry_after_seconds.expect("refused");
        assert!((1..=20).contains(&retry), "{retry}");
        assert!((retry..=60).contains(&refused.reset_seconds), "{refused:?}");
        // Another key is counted apart.
        assert!(limits.check_key("k2").expect("on").allowed());
        assert!(limits.check_address(IpAddr::from([1, 2, 3, 4])).is_none());
    }

    #[test]
    fn addresses_of_one_ipv6_subnet_share_a_limit() {
        let limits = limits(0, 1);
        let first: IpAddr = "2001:db8::1".parse().expect("ip");
        let neighbour: IpAddr = "2001:db8::2".parse().expect("ip");
        assert!(limits.check_address(first).expect("on").allowed());
        assert!(!limits.check_address(neighbour).expect("on").allowed());
        assert!(limits.check_key("k").is_none());
    }
}
