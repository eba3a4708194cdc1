//! Stripe's webhook signature scheme, checked over the raw body before anything is parsed.

use stripe_webhook::{Event, Webhook, WebhookError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("no v1 signature matches a configured secret")]
    Mismatch,
    #[error("the signature's timestamp is more than 300 s away from now")]
    Stale,
    #[error("the body is not UTF-8 JSON")]
    Body,
}

/// A verified delivery: the parsed event, or (when the signature is good but the SDK cannot
/// type the object) the raw envelope's id and type.
pub enum Verified {
    Event(Box<Event>),
    Untyped { id: String, type_: String },
}

/// Accepts the delivery when any `v1` signature in the header matches any configured secret
/// (several secrets allow rotation without downtime) and its timestamp is within 300 s.
pub fn verify_signature<'a>(
    body: &[u8],
    header: Option<&str>,
    secrets: impl Iterator<Item = &'a str>,
) -> Result<Verified, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let payload = std::str::from_utf8(body).map_err(|_| SignatureError::Body)?;
    let mut last = SignatureError::Mismatch;
    for secret in secrets {
        match Webhook::construct_event(payload, header, secret) {
            Ok(event) => return Ok(Verified::Event(Box::new(event))),
            // The signature and timestamp were verified before parsing failed.
            Err(WebhookError::BadParse(_)) => return untyped(payload),
            Err(WebhookError::BadTimestamp(_)) => last = SignatureError::Stale,
            Err(_) => {}
        }
    }
    Err(last)
}

fn untyped(payload: &str) -> Result<Verified, SignatureError> {
    let value: serde_json::Value =
        serde_json::from_str(payload).map_err(|_| SignatureError::Body)?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    match (field("id"), field("type")) {
        (Some(id), Some(type_)) => Ok(Verified::Untyped { id, type_ }),
        _ => Err(SignatureError::Body),
    }
}
