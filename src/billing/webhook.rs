//! Stripe's webhook signature scheme, checked over the raw body before anything is parsed.

use stripe_webhook::{Webhook, WebhookError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("no v1 signature matches a configured secret")]
    Mismatch,
    #[error("the signature's timestamp is more than 300 s away from now")]
    Stale,
    #[error("the body is not UTF-8")]
    Body,
}

/// Accepts the delivery when any `v1` signature in the header matches any configured secret
/// (several secrets allow rotation without downtime) and its timestamp is within 300 s; returns
/// the verified payload. The SDK checks the signature and then tries to type the event; its
/// typing is not used (events are read by [`super::event`], tolerant of newer API versions), so
/// a parse failure after a good signature still counts as verified.
pub fn verify_signature<'b, 'a>(
    body: &'b [u8],
    header: Option<&str>,
    secrets: impl Iterator<Item = &'a str>,
) -> Result<&'b str, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let payload = std::str::from_utf8(body).map_err(|_| SignatureError::Body)?;
    let mut last = SignatureError::Mismatch;
    for secret in secrets {
        match Webhook::construct_event(payload, header, secret) {
            // The signature and timestamp were verified before parsing was tried.
            Ok(_) | Err(WebhookError::BadParse(_)) => return Ok(payload),
            Err(WebhookError::BadTimestamp(_)) => last = SignatureError::Stale,
            Err(_) => {}
        }
    }
    Err(last)
}
