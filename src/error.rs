//! The one JSON error shape every client sees:
//! `{"error":{"code":"…","message":"…","trace_id":"…", …extra fields}}`.
//! Codes are stable snake_case strings, all listed in [`Code`]. Unexpected errors are logged
//! with their cause chain and the trace id, and answered as an opaque 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::money::MoneyError;
use crate::supply_chain::GateError;

tokio::task_local! {
    /// The trace id of the request being served (set by the trace middleware).
    pub static TRACE_ID: String;
}

/// The current request's trace id, or "-" outside a request.
pub fn trace_id() -> String {
    TRACE_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".into())
}

/// Every error code a client can see, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    SpellNotFound,
    VersionExists,
    VersionNotNewer,
    VersionYanked,
    SignerExists,
    InvalidSigner,
    BudgetExhausted,
    SpendLimitReached,
    InsufficientScope,
    SpellNotAllowed,
    InvalidBudget,
    Conflict,
    SpellFailed,
    SpellTrapped,
    DeadlineExceeded,
    MemoryLimitExceeded,
    OutputTooLarge,
    FuelExhausted,
    Overloaded,
    /// The caller's own casts fill its share of the sandbox (429); others are served.
    TooManyConcurrentCasts,
    BillingDisabled,
    AmountOutOfRange,
    NoBillingAccount,
    SignatureInvalid,
    PaymentProviderError,
    NoPaymentMethod,
    InvalidAutoRecharge,
    /// A signed Stripe event that cannot be read: 5xx so Stripe retries it.
    EventUnparseable,
    /// A signed Stripe money event in an API version the endpoint is not pinned to.
    EventApiVersionUnsupported,
    /// `GET /readyz`: a dependency (database, sandbox capacity) is not ready.
    NotReady,
    /// `Idempotency-Key` is empty, longer than 255 characters or not printable ASCII (400).
    IdempotencyKeyInvalid,
    /// The key was used for a different request (422).
    IdempotencyKeyReused,
    /// The first request with the key is still running (409).
    IdempotencyKeyInUse,
    /// `DELETE /v1/users/me` without `{"confirm":"<handle>"}` naming the caller (422).
    ConfirmationRequired,
    /// Over a rate limit (429, with `Retry-After` and `RateLimit-*` headers), or too many
    /// connections from one address.
    RateLimited,
    /// A user already has as many of something as they may (422, naming the `limit`).
    LimitReached,
    /// The request target is longer than the server reads (414).
    UriTooLong,
    /// The request's headers or body did not arrive in time (408).
    RequestTimeout,
    /// The request's headers are too large (431).
    HeadersTooLarge,
    /// GitHub login is not configured (404).
    LoginDisabled,
    /// The OAuth `state` is missing, forged, expired, not this browser's or replayed (400).
    InvalidOauthState,
    /// GitHub refused the authorization code, or the user declined (400).
    OauthCodeRejected,
    /// The GitHub account has no verified primary email (403).
    EmailUnverified,
    /// The GitHub account's spellhost account was erased; it cannot log in again (403).
    AccountDeleted,
    /// GitHub could not be reached or answered unexpectedly (502).
    GithubUnavailable,
    /// A state-changing request authenticated by the session cookie, without proof that it
    /// comes from this origin (403).
    CsrfRejected,
    /// A cast's input does not match its spell's `input_schema` (422, with `errors`).
    InvalidInput,
    /// The supply-chain gate's own codes (`sbom_invalid`, …).
    Gate(&'static str),
    Internal,
}

impl Code {
    /// Every code a client can see, as sent (the OpenAPI document's `ErrorCode` enum): each
    /// variant's `as_str`, and the supply-chain gate's codes. The test
    /// `stable_codes_name_every_code` fails to compile when a variant is added and not listed.
    pub const STABLE: &'static [&'static str] = &[
        "login_disabled",
        "invalid_oauth_state",
        "oauth_code_rejected",
        "email_unverified",
        "account_deleted",
        "github_unavailable",
        "csrf_rejected",
        "invalid_input",
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "payload_too_large",
        "unsupported_media_type",
        "spell_not_found",
        "version_exists",
        "version_not_newer",
        "version_yanked",
        "signer_exists",
        "invalid_signer",
        "budget_exhausted",
        "spend_limit_reached",
        "insufficient_scope",
        "spell_not_allowed",
        "invalid_budget",
        "conflict",
        "spell_failed",
        "spell_trapped",
        "deadline_exceeded",
        "memory_limit_exceeded",
        "output_too_large",
        "fuel_exhausted",
        "overloaded",
        "too_many_concurrent_casts",
        "billing_disabled",
        "amount_out_of_range",
        "no_billing_account",
        "signature_invalid",
        "payment_provider_error",
        "no_payment_method",
        "invalid_auto_recharge",
        "event_unparseable",
        "event_api_version_unsupported",
        "not_ready",
        "idempotency_key_invalid",
        "idempotency_key_reused",
        "idempotency_key_in_use",
        "confirmation_required",
        "rate_limited",
        "limit_reached",
        "uri_too_long",
        "request_timeout",
        "headers_too_large",
        "internal",
        // The supply-chain gate's (`GateError::code`).
        "unsigned",
        "bundle_malformed",
        "bundle_artifact_mismatch",
        "bundle_evidence_invalid",
        "signer_identity_mismatch",
        "signer_issuer_mismatch",
        "sbom_invalid",
        "sbom_attestation_invalid",
        "sbom_unsigned",
        "sbom_digest_mismatch",
        "sbom_component_mismatch",
        "manifest_invalid",
        "module_invalid",
        "limit_above_host_max",
        "module_too_complex",
        "import_not_allowed",
        "vulnerable_component",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::SpellNotFound => "spell_not_found",
            Code::VersionExists => "version_exists",
            Code::SignerExists => "signer_exists",
            Code::VersionNotNewer => "version_not_newer",
            Code::VersionYanked => "version_yanked",
            Code::InvalidSigner => "invalid_signer",
            Code::BudgetExhausted => "budget_exhausted",
            Code::SpendLimitReached => "spend_limit_reached",
            Code::InsufficientScope => "insufficient_scope",
            Code::SpellNotAllowed => "spell_not_allowed",
            Code::InvalidBudget => "invalid_budget",
            Code::Conflict => "conflict",
            Code::SpellFailed => "spell_failed",
            Code::SpellTrapped => "spell_trapped",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::MemoryLimitExceeded => "memory_limit_exceeded",
            Code::OutputTooLarge => "output_too_large",
            Code::FuelExhausted => "fuel_exhausted",
            Code::Overloaded => "overloaded",
            Code::TooManyConcurrentCasts => "too_many_concurrent_casts",
            Code::NotReady => "not_ready",
            Code::BillingDisabled => "billing_disabled",
            Code::AmountOutOfRange => "amount_out_of_range",
            Code::NoBillingAccount => "no_billing_account",
            Code::SignatureInvalid => "signature_invalid",
            Code::PaymentProviderError => "payment_provider_error",
            Code::NoPaymentMethod => "no_payment_method",
            Code::InvalidAutoRecharge => "invalid_auto_recharge",
            Code::EventUnparseable => "event_unparseable",
            Code::EventApiVersionUnsupported => "event_api_version_unsupported",
            Code::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::IdempotencyKeyInUse => "idempotency_key_in_use",
            Code::ConfirmationRequired => "confirmation_required",
            Code::RateLimited => "rate_limited",
            Code::LimitReached => "limit_reached",
            Code::UriTooLong => "uri_too_long",
            Code::RequestTimeout => "request_timeout",
            Code::HeadersTooLarge => "headers_too_large",
            Code::LoginDisabled => "login_disabled",
            Code::InvalidOauthState => "invalid_oauth_state",
            Code::OauthCodeRejected => "oauth_code_rejected",
            Code::EmailUnverified => "email_unverified",
            Code::AccountDeleted => "account_deleted",
            Code::GithubUnavailable => "github_unavailable",
            Code::CsrfRejected => "csrf_rejected",
            Code::InvalidInput => "invalid_input",
            Code::Gate(code) => code,
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest | Code::IdempotencyKeyInvalid => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden | Code::InsufficientScope | Code::SpellNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Code::NotFound | Code::SpellNotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::VersionYanked => StatusCode::GONE,
            Code::VersionExists
            | Code::VersionNotNewer
            | Code::SignerExists
            | Code::NoBillingAccount
            | Code::NoPaymentMethod
            | Code::IdempotencyKeyInUse
            | Code::Conflict => StatusCode::CONFLICT,
            Code::BudgetExhausted | Code::SpendLimitReached => StatusCode::PAYMENT_REQUIRED,
            Code::SpellFailed
            | Code::SpellTrapped
            | Code::DeadlineExceeded
            | Code::MemoryLimitExceeded
            | Code::OutputTooLarge
            | Code::FuelExhausted
            | Code::AmountOutOfRange
            | Code::InvalidBudget
            | Code::InvalidSigner
            | Code::InvalidAutoRecharge
            | Code::IdempotencyKeyReused
            | Code::ConfirmationRequired
            | Code::InvalidInput
            | Code::Gate(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Overloaded | Code::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            // A feature this server does not offer, not a transient failure to retry.
            Code::BillingDisabled => StatusCode::NOT_FOUND,
            Code::TooManyConcurrentCasts | Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::LimitReached => StatusCode::UNPROCESSABLE_ENTITY,
            Code::UriTooLong => StatusCode::URI_TOO_LONG,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Code::SignatureInvalid => StatusCode::BAD_REQUEST,
            Code::LoginDisabled => StatusCode::NOT_FOUND,
            Code::InvalidOauthState | Code::OauthCodeRejected => StatusCode::BAD_REQUEST,
            Code::EmailUnverified | Code::AccountDeleted | Code::CsrfRejected => {
                StatusCode::FORBIDDEN
            }
            Code::GithubUnavailable => StatusCode::BAD_GATEWAY,
            Code::PaymentProviderError => StatusCode::BAD_GATEWAY,
            Code::Internal | Code::EventUnparseable | Code::EventApiVersionUnsupported => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The code for a bare status (axum rejections, fallbacks).
    pub fn for_status(status: StatusCode) -> Code {
        match status {
            StatusCode::UNAUTHORIZED => Code::Unauthorized,
            StatusCode::FORBIDDEN => Code::Forbidden,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
            StatusCode::URI_TOO_LONG => Code::UriTooLong,
            StatusCode::REQUEST_TIMEOUT => Code::RequestTimeout,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Code::HeadersTooLarge,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => Code::Overloaded,
            s if s.is_client_error() => Code::BadRequest,
            _ => Code::Internal,
        }
    }
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// Extra fields beside code/message/trace_id (e.g. `required_microusd`).
    pub extra: Map<String, Value>,
    /// Extra headers (e.g. `Retry-After`).
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            extra: Map::new(),
            retry_after_seconds: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// An unexpected failure: logged with its cause chain, answered as an opaque 500.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        tracing::error!(trace_id = %trace_id(), error = format!("{error:#}"), "internal error");
        ApiError::new(
            Code::Internal,
            "internal error; quote the trace_id when reporting it",
        )
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            Code::Unauthorized,
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(Code::BadRequest, message)
    }

    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), self.code.as_str().into());
        error.insert("message".into(), self.message.clone().into());
        error.insert("trace_id".into(), trace_id().into());
        for (key, value) in &self.extra {
            error.insert(key.clone(), value.clone());
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// `422 limit_reached`: the user already has `max` of what `limit` names (`keys_per_user`, …).
pub fn limit_reached(limit: &'static str, max: i64) -> ApiError {
    ApiError::new(
        Code::LimitReached,
        format!("limit reached: at most {max} ({limit}); remove some first or ask the operator"),
    )
    .with("limit", limit)
    .with("max", max)
}

impl From<GateError> for ApiError {
    fn from(error: GateError) -> Self {
        let refusal = ApiError::new(Code::Gate(error.code()), error.to_string());
        match &error {
            // What blocks, for a client to act on without parsing the message.
            GateError::VulnerableComponent {
                component,
                advisory,
                severity,
                ..
            } => refusal
                .with("component", component.as_str())
                .with("advisory", advisory.as_str())
                .with("severity", severity.as_str()),
            GateError::LimitAboveHostMax { field, value, max } => refusal
                .with("field", format!("limits.{field}"))
                .with("value", *value)
                .with("max", *max),
            _ => refusal,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::internal(error)
    }
}

impl From<MoneyError> for ApiError {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::Database(error) => ApiError::internal(error),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(error: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError;
        match error {
            RegistryError::NotFound(spell) => {
                ApiError::new(Code::SpellNotFound, format!("spell {spell} not found"))
            }
            RegistryError::VersionExists(what) => ApiError::new(
                Code::VersionExists,
                format!("{what} is already published; versions are immutable"),
            ),
            RegistryError::VersionNotNewer { .. } => ApiError::new(
                Code::VersionNotNewer,
                format!(
                    "{error}: a new version must be higher than every published one (yanked ones too)"
                ),
            ),
            RegistryError::Yanked(_) => ApiError::new(Code::VersionYanked, error.to_string()),
            RegistryError::NotOwner(_) => ApiError::new(Code::Forbidden, error.to_string()),
            RegistryError::SignerExists(_) => ApiError::new(Code::SignerExists, error.to_string()),
            RegistryError::InvalidSigner(_) => {
                ApiError::new(Code::InvalidSigner, error.to_string())
            }
            RegistryError::LimitReached { limit, max } => limit_reached(limit, max),
            RegistryError::Gate(error) => error.into(),
            RegistryError::Sandbox(crate::sandbox::SandboxError::Busy) => ApiError::new(
                Code::Overloaded,
                "every compile thread is busy; retry shortly",
            )
            .retry_after(1),
            // A cast's cache miss (publish answers this as `module_too_complex`): the compile
            // runs on to its end and caches the module, so a retry finds it.
            RegistryError::Sandbox(crate::sandbox::SandboxError::CompileTimeLimit(_)) => {
                ApiError::new(
                    Code::Overloaded,
                    "the spell is still being compiled; retry shortly",
                )
                .retry_after(5)
            }
            RegistryError::Invalid { .. } => ApiError::bad_request(error.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::billing::BillingError> for ApiError {
    fn from(error: crate::billing::BillingError) -> Self {
        use crate::billing::BillingError;
        match error {
            BillingError::AmountOutOfRange { min, max } => {
                ApiError::new(Code::AmountOutOfRange, error.to_string())
                    .with("min_cents", min)
                    .with("max_cents", max)
            }
            BillingError::NoBillingAccount => {
                ApiError::new(Code::NoBillingAccount, error.to_string())
            }
            BillingError::NoPaymentMethod => {
                ApiError::new(Code::NoPaymentMethod, error.to_string())
            }
            BillingError::InvalidAutoRecharge(message) => {
                ApiError::new(Code::InvalidAutoRecharge, message)
            }
            BillingError::Stripe(message) => {
                tracing::warn!(trace_id = %trace_id(), error = %message, "Stripe request failed");
                ApiError::new(
                    Code::PaymentProviderError,
                    "the payment provider could not be reached; try again",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::billing::Unreadable> for ApiError {
    fn from(error: crate::billing::Unreadable) -> Self {
        use crate::billing::Unreadable;
        let code = match error {
            Unreadable::ApiVersion { .. } => Code::EventApiVersionUnsupported,
            _ => Code::EventUnparseable,
        };
        ApiError::new(code, error.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::internal(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant but `Gate`; the match below does not compile when a variant is added,
    /// so that it is added here too (and then to `Code::STABLE`).
    fn every_code() -> Vec<Code> {
        let codes = vec![
            Code::BadRequest,
            Code::Unauthorized,
            Code::Forbidden,
            Code::NotFound,
            Code::MethodNotAllowed,
            Code::PayloadTooLarge,
            Code::UnsupportedMediaType,
            Code::SpellNotFound,
            Code::VersionExists,
            Code::VersionNotNewer,
            Code::VersionYanked,
            Code::SignerExists,
            Code::InvalidSigner,
            Code::BudgetExhausted,
            Code::SpendLimitReached,
            Code::InsufficientScope,
            Code::SpellNotAllowed,
            Code::InvalidBudget,
            Code::Conflict,
            Code::SpellFailed,
            Code::SpellTrapped,
            Code::DeadlineExceeded,
            Code::MemoryLimitExceeded,
            Code::OutputTooLarge,
            Code::FuelExhausted,
            Code::Overloaded,
            Code::TooManyConcurrentCasts,
            Code::BillingDisabled,
            Code::AmountOutOfRange,
            Code::NoBillingAccount,
            Code::SignatureInvalid,
            Code::PaymentProviderError,
            Code::NoPaymentMethod,
            Code::InvalidAutoRecharge,
            Code::EventUnparseable,
            Code::EventApiVersionUnsupported,
            Code::NotReady,
            Code::IdempotencyKeyInvalid,
            Code::IdempotencyKeyReused,
            Code::IdempotencyKeyInUse,
            Code::ConfirmationRequired,
            Code::RateLimited,
            Code::LimitReached,
            Code::UriTooLong,
            Code::RequestTimeout,
            Code::HeadersTooLarge,
            Code::LoginDisabled,
            Code::InvalidOauthState,
            Code::OauthCodeRejected,
            Code::EmailUnverified,
            Code::AccountDeleted,
            Code::GithubUnavailable,
            Code::CsrfRejected,
            Code::InvalidInput,
            Code::Internal,
        ];
        for code in &codes {
            match code {
                Code::BadRequest
                | Code::Unauthorized
                | Code::Forbidden
                | Code::NotFound
                | Code::MethodNotAllowed
                | Code::PayloadTooLarge
                | Code::UnsupportedMediaType
                | Code::SpellNotFound
                | Code::VersionExists
                | Code::VersionNotNewer
                | Code::VersionYanked
                | Code::SignerExists
                | Code::InvalidSigner
                | Code::BudgetExhausted
                | Code::SpendLimitReached
                | Code::InsufficientScope
                | Code::SpellNotAllowed
                | Code::InvalidBudget
                | Code::Conflict
                | Code::SpellFailed
                | Code::SpellTrapped
                | Code::DeadlineExceeded
                | Code::MemoryLimitExceeded
                | Code::OutputTooLarge
                | Code::FuelExhausted
                | Code::Overloaded
                | Code::TooManyConcurrentCasts
                | Code::BillingDisabled
                | Code::AmountOutOfRange
                | Code::NoBillingAccount
                | Code::SignatureInvalid
                | Code::PaymentProviderError
                | Code::NoPaymentMethod
                | Code::InvalidAutoRecharge
                | Code::EventUnparseable
                | Code::EventApiVersionUnsupported
                | Code::NotReady
                | Code::IdempotencyKeyInvalid
                | Code::IdempotencyKeyReused
                | Code::IdempotencyKeyInUse
                | Code::ConfirmationRequired
                | Code::RateLimited
                | Code::LimitReached
                | Code::UriTooLong
                | Code::RequestTimeout
                | Code::HeadersTooLarge
                | Code::LoginDisabled
                | Code::InvalidOauthState
                | Code::OauthCodeRejected
                | Code::EmailUnverified
                | Code::AccountDeleted
                | Code::GithubUnavailable
                | Code::CsrfRejected
                | Code::InvalidInput
                | Code::Internal
                | Code::Gate(_) => {}
            }
        }
        codes
    }

    #[test]
    fn stable_codes_name_every_code() {
        for code in every_code() {
            assert!(
                Code::STABLE.contains(&code.as_str()),
                "{} is not in Code::STABLE",
                code.as_str()
            );
        }
        let mut sorted = Code::STABLE.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), Code::STABLE.len(), "a code is listed twice");
    }
}
