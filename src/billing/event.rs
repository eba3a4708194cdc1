//! Stripe events, read from the fields spellhost needs and tolerant of every other field, so an
//! API version newer than the SDK's (async-stripe issue 761) cannot turn a paid top-up into an
//! acknowledged, ignored delivery. An event of a family spellhost acts on whose object lacks a
//! needed field is *unparseable*: it is not recorded and Stripe retries it.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::BillingError;
use crate::money::MicroUsd;

/// Why a delivery could not be read. Under a valid signature this answers 5xx, so Stripe
/// retries it (for three days) instead of it being acknowledged and lost.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unreadable {
    #[error("the event is not a Stripe event envelope: {0}")]
    Envelope(String),
    #[error("the {type_} event's object cannot be read: {message}")]
    Object { type_: String, message: String },
    #[error(
        "the {type_} event is rendered in API version {got}, not one this endpoint is pinned to \
         ({expected}): set the webhook endpoint's API version or SPELLHOST_STRIPE_API_VERSION"
    )]
    ApiVersion {
        type_: String,
        got: String,
        expected: String,
    },
}

impl Unreadable {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Unreadable::Envelope(_) | Unreadable::Object { .. } => "unparseable",
            Unreadable::ApiVersion { .. } => "api_version_unsupported",
        }
    }
}

/// An id, or the expanded object carrying it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

fn id_of(field: &Option<Expandable>) -> Option<&str> {
    field.as_ref().map(Expandable::id)
}

/// An amount in cents as Stripe sent it: any JSON number, so that an absurd one (i64::MAX,
/// 1e20, a fraction) is read and then refused with a reason instead of failing to parse.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Amount(serde_json::Number);

impl Amount {
    /// The amount as cents within `0..=max_cents`, or the event is rejected.
    pub fn cents(&self, field: &str, max_cents: i64) -> Result<Cents, BillingError> {
        match self.0.as_i64() {
            Some(cents) if (0..=max_cents).contains(&cents) => Ok(Cents(cents)),
            _ => Err(BillingError::Rejected(format!(
                "{field} = {} is outside 0..={max_cents} cents (SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS)",
                self.0
            ))),
        }
    }
}

/// Cents that passed the per-event maximum, so converting them to micro-dollars cannot
/// overflow (the maximum is at most 10¹² cents, 10¹⁶ µ$).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cents(i64);

impl Cents {
    pub fn get(self) -> i64 {
        self.0
    }

    pub fn microusd(self) -> Result<MicroUsd, BillingError> {
        MicroUsd::from_cents(self.0)
            .ok_or_else(|| BillingError::Rejected(format!("{} cents overflow", self.0)))
    }
}

pub fn is_usd(currency: Option<&str>) -> bool {
    currency.is_some_and(|c| c.eq_ignore_ascii_case("usd"))
}

#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub id: String,
    pub mode: String,
    pub payment_status: String,
    pub amount_total: Option<Amount>,
    pub currency: Option<String>,
    pub payment_intent: Option<Expandable>,
}

impl Session {
    pub fn payment_intent(&self) -> Option<&str> {
        id_of(&self.payment_intent)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentError {
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

impl PaymentError {
    /// `code (decline_code): message`, as much of it as Stripe gave.
    pub fn describe(&self) -> String {
        let mut text = self.code.clone().unwrap_or_else(|| "payment_failed".into());
        if let Some(decline) = &self.decline_code {
            text.push_str(&format!(" ({decline})"));
        }
        if let Some(message) = &self.message {
            text.push_str(&format!(": {message}"));
        }
        text
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount_received: Amount,
    pub currency: String,
    pub customer: Option<Expandable>,
    pub payment_method: Option<Expandable>,
    pub setup_future_usage: Option<String>,
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    pub last_payment_error: Option<PaymentError>,
}

impl PaymentIntent {
    pub fn customer(&self) -> Option<&str> {
        id_of(&self.customer)
    }

    pub fn payment_method(&self) -> Option<&str> {
        id_of(&self.payment_method)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    pub amount_refunded: Amount,
    pub currency: String,
    pub payment_intent: Option<Expandable>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: Amount,
    pub currency: String,
    pub status: Option<String>,
    pub charge: Option<Expandable>,
    pub payment_intent: Option<Expandable>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BalanceTransaction {
    amount: serde_json::Number,
}

impl BalanceTransaction {
    /// −1 for funds withdrawn, 1 for funds returned, 0 for neither (or a non-integer).
    pub fn sign(&self) -> i64 {
        match (self.amount.as_i64(), self.amount.as_u64()) {
            (Some(amount), _) => amount.signum(),
            (None, Some(_)) => 1,
            (None, None) => 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub amount: Amount,
    pub currency: String,
    pub charge: Expandable,
    pub payment_intent: Option<Expandable>,
    pub status: String,
    #[serde(default)]
    pub balance_transactions: Vec<BalanceTransaction>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SetupIntent {
    pub status: String,
    pub usage: Option<String>,
    pub customer: Option<Expandable>,
    pub payment_method: Option<Expandable>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Card {
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i64>,
    pub exp_year: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    pub customer: Option<Expandable>,
    pub card: Option<Card>,
}

/// The object of an event spellhost acts on, read into the fields it needs.
#[derive(Debug, Clone)]
pub enum Object {
    Session(Session),
    PaymentIntent(PaymentIntent),
    /// `charge.refunded`: the charge with its running refunded total.
    Charge(Charge),
    /// `charge.refund.updated`: one refund.
    Refund(Refund),
    Dispute(Dispute),
    SetupIntent(SetupIntent),
    PaymentMethod(PaymentMethod),
    /// An event type spellhost does not act on: acknowledged without reading its object.
    NotActedOn,
}

/// A Stripe event (the envelope of a webhook delivery or an item of `GET /v1/events`).
#[derive(Debug, Clone)]
pub struct StripeEvent {
    pub id: String,
    pub type_: String,
    /// When Stripe created the event, Unix seconds.
    pub created: i64,
    pub object: Object,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    type_: String,
    api_version: Option<String>,
    #[serde(default)]
    created: i64,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    object: Value,
}

/// The families of event types spellhost acts on; every other type is acknowledged unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Session,
    PaymentIntent,
    Charge,
    Refund,
    Dispute,
    SetupIntent,
    PaymentMethod,
}

fn family(type_: &str) -> Option<Family> {
    let families = [
        ("checkout.session.", Family::Session),
        ("payment_intent.", Family::PaymentIntent),
        ("charge.refunded", Family::Charge),
        ("charge.refund.", Family::Refund),
        ("charge.dispute.", Family::Dispute),
        ("setup_intent.", Family::SetupIntent),
        ("payment_method.", Family::PaymentMethod),
    ];
    families
        .into_iter()
        .find(|(prefix, _)| type_.starts_with(prefix))
        .map(|(_, family)| family)
}

/// Whether spellhost acts on events of this type (and so must not acknowledge them unread).
pub fn acted_on(type_: &str) -> bool {
    family(type_).is_some()
}

impl StripeEvent {
    /// Reads an event. `accepted_versions` are the API versions the endpoint is pinned to: an
    /// event spellhost acts on that is rendered in another version is unreadable.
    pub fn parse(payload: &str, accepted_versions: &[String]) -> Result<StripeEvent, Unreadable> {
        let envelope: Envelope =
            serde_json::from_str(payload).map_err(|e| Unreadable::Envelope(e.to_string()))?;
        let Some(family) = family(&envelope.type_) else {
            return Ok(StripeEvent {
                id: envelope.id,
                type_: envelope.type_,
                created: envelope.created,
                object: Object::NotActedOn,
            });
        };
        let version = envelope.api_version.as_deref().unwrap_or("none");
        if !accepted_versions.iter().any(|v| v == version) {
            return Err(Unreadable::ApiVersion {
                type_: envelope.type_,
                got: version.to_owned(),
                expected: accepted_versions.join(", "),
            });
        }
        let object = envelope
            .data
            .map(|d| d.object)
            .ok_or_else(|| Unreadable::Object {
                type_: envelope.type_.clone(),
                message: "no data.object".into(),
            })?;
        let object = read_object(family, object).map_err(|e| Unreadable::Object {
            type_: envelope.type_.clone(),
            message: e.to_string(),
        })?;
        Ok(StripeEvent {
            id: envelope.id,
            type_: envelope.type_,
            created: envelope.created,
            object,
        })
    }
}

fn read_object(family: Family, object: Value) -> serde_json::Result<Object> {
    use serde_json::from_value;
    Ok(match family {
        Family::Session => Object::Session(from_value(object)?),
        Family::PaymentIntent => Object::PaymentIntent(from_value(object)?),
        Family::Charge => Object::Charge(from_value(object)?),
        Family::Refund => Object::Refund(from_value(object)?),
        Family::Dispute => Object::Dispute(from_value(object)?),
        Family::SetupIntent => Object::SetupIntent(from_value(object)?),
        Family::PaymentMethod => Object::PaymentMethod(from_value(object)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: &str = "2026-09-30.endive";

    fn versions() -> Vec<String> {
        vec![VERSION.to_owned()]
    }

    fn event(type_: &str, object: Value) -> String {
        serde_json::json!({"id": "evt_1", "object": "event", "type": type_, "api_version": VERSION,
            "created": 1, "data": {"object": object}})
        .to_string()
    }

    #[test]
    fn unknown_fields_are_ignored_and_needed_ones_read() {
        let payload = event(
            "checkout.session.completed",
            serde_json::json!({"id": "cs_1", "mode": "payment", "payment_status": "paid",
                "amount_total": 500, "currency": "usd", "payment_intent": {"id": "pi_1", "object": "payment_intent"},
                "a_field_from_2030": {"nested": [1, 2, 3]}}),
        );
        let parsed = StripeEvent::parse(&payload, &versions()).expect("parses");
        let Object::Session(session) = parsed.object else {
            panic!("a session");
        };
        assert_eq!(session.payment_intent(), Some("pi_1"));
        assert_eq!(
            session
                .amount_total
                .map(|a| a.cents("amount_total", 1000).ok()),
            Some(Some(Cents(500)))
        );
    }

    #[test]
    fn a_money_event_missing_a_needed_field_is_unreadable() {
        let payload = event("charge.refunded", serde_json::json!({"id": "ch_1"}));
        let error = StripeEvent::parse(&payload, &versions()).expect_err("unreadable");
        assert_eq!(error.label(), "unparseable");
    }

    #[test]
    fn an_event_not_acted_on_is_read_without_its_object() {
        let payload = event("invoice.created", serde_json::json!("not even an object"));
        let parsed = StripeEvent::parse(&payload, &[]).expect("acknowledged");
        assert!(matches!(parsed.object, Object::NotActedOn));
    }

    #[test]
    fn a_money_event_in_another_api_version_is_unreadable() {
        let payload = event("payment_intent.succeeded", serde_json::json!({}));
        let error = StripeEvent::parse(&payload, &["2025-03-31.basil".to_owned()])
            .expect_err("pinned version");
        assert_eq!(error.label(), "api_version_unsupported");
    }

    #[test]
    fn absurd_amounts_are_read_then_refused() {
        for raw in [
            "9223372036854775807",
            "100000000000000000000",
            "1.5",
            "-1",
            "1001",
        ] {
            let amount: Amount = serde_json::from_str(raw).expect("a number");
            assert!(
                matches!(amount.cents("amount", 1000), Err(BillingError::Rejected(_))),
                "{raw}"
            );
        }
        let amount: Amount = serde_json::from_str("1000").expect("a number");
        assert_eq!(amount.cents("amount", 1000).ok(), Some(Cents(1000)));
    }

    #[test]
    fn families_cover_every_money_event_type() {
        for type_ in [
            "checkout.session.completed",
            "checkout.session.async_payment_succeeded",
            "payment_intent.succeeded",
            "payment_intent.payment_failed",
            "charge.refunded",
            "charge.refund.updated",
            "charge.dispute.created",
            "charge.dispute.funds_withdrawn",
            "charge.dispute.funds_reinstated",
            "charge.dispute.closed",
            "setup_intent.succeeded",
            "payment_method.attached",
        ] {
            assert!(acted_on(type_), "{type_}");
        }
        assert!(!acted_on("invoice.paid"));
        assert!(!acted_on("charge.succeeded"));
    }
}
