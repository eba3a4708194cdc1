//! Recovery: `spellhost billing reconcile` lists Stripe's events and applies any that were
//! never applied, through the same code as the webhook; `spellhost billing replay` applies one
//! recorded event again.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::apply::{self, ReceiveError, Received};
use super::event::acted_on;
use super::{Billing, BillingError, stripe_api, stripe_error};
use crate::store::Db;

/// Events per page of `GET /v1/events` (Stripe's maximum).
const PAGE_LIMIT: u8 = 100;

#[derive(Serialize)]
struct Created {
    gte: i64,
}

#[derive(Serialize)]
struct ListEvents<'a> {
    limit: u8,
    created: Created,
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_after: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_success: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
pub struct ReconcileReport {
    /// Events Stripe listed.
    pub listed: u64,
    /// Of a type spellhost does not act on.
    pub not_acted_on: u64,
    /// Recorded before (by a webhook delivery or an earlier run), by recorded status.
    pub already_recorded: BTreeMap<String, u64>,
    /// Applied now, by outcome.
    pub applied: BTreeMap<String, u64>,
    /// Events applied now, or refused (unreadable: not recorded).
    pub events: Vec<ReconciledEvent>,
}

#[derive(Debug, Serialize)]
pub struct ReconciledEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub type_: String,
    /// An outcome, or `unparseable` / `api_version_unsupported`.
    pub result: String,
    pub reason: Option<String>,
}

impl ReconciledEvent {
    pub fn from_received(received: &Received) -> Self {
        ReconciledEvent {
            id: received.id.clone(),
            type_: received.type_.clone(),
            result: received.outcome.as_str().to_owned(),
            reason: received.reason.clone(),
        }
    }
}

impl Billing {
    /// Lists the events created since `since` (Unix seconds; `undelivered_only`: only those
    /// whose webhook delivery has not succeeded, `delivery_success=false`) and applies each one
    /// spellhost acts on and never recorded. Idempotent: a second run applies nothing.
    pub async fn reconcile(
        &self,
        db: &Db,
        since: i64,
        undelivered_only: bool,
    ) -> Result<ReconcileReport, BillingError> {
        let mut report = ReconcileReport::default();
        let mut starting_after: Option<String> = None;
        loop {
            let query = ListEvents {
                limit: PAGE_LIMIT,
                created: Created { gte: since },
                starting_after: starting_after.as_deref(),
                delivery_success: undelivered_only.then_some(false),
            };
            let page = stripe_api::get(&self.client, "/events", Some(&query))
                .await
                .map_err(stripe_error)?;
            let events = page["data"].as_array().cloned().unwrap_or_default();
            for event in &events {
                self.reconcile_one(db, event, &mut report).await?;
            }
            let last = events
                .last()
                .and_then(|e| e["id"].as_str())
                .map(str::to_owned);
            match (page["has_more"].as_bool(), last) {
                (Some(true), Some(last)) => starting_after = Some(last),
                _ => return Ok(report),
            }
        }
    }

    async fn reconcile_one(
        &self,
        db: &Db,
        event: &Value,
        report: &mut ReconcileReport,
    ) -> Result<(), BillingError> {
        report.listed += 1;
        let id = event["id"].as_str().unwrap_or_default();
        let type_ = event["type"].as_str().unwrap_or_default();
        if !acted_on(type_) {
            report.not_acted_on += 1;
            return Ok(());
        }
        if let Some(status) = apply::recorded_status(db, id).await? {
            *report.already_recorded.entry(status).or_default() += 1;
            return Ok(());
        }
        let reconciled = match apply::receive(db, &self.rules(), &event.to_string()).await {
            Ok(received) => {
                *report
                    .applied
                    .entry(received.outcome.as_str().to_owned())
                    .or_default() += 1;
                ReconciledEvent::from_received(&received)
            }
            Err(ReceiveError::Unreadable(error)) => ReconciledEvent {
                id: id.to_owned(),
                type_: type_.to_owned(),
                result: error.label().to_owned(),
                reason: Some(error.to_string()),
            },
            Err(ReceiveError::Billing(error)) => return Err(error),
        };
        report.events.push(reconciled);
        Ok(())
    }

    /// Applies one event again: the recorded one, or (never recorded) the one Stripe has.
    pub async fn replay(&self, db: &Db, event_id: &str) -> Result<Received, ReceiveError> {
        if let Some(received) = apply::replay(db, &self.rules(), event_id).await? {
            return Ok(received);
        }
        // The id becomes part of a URL path: only Stripe's own shape is accepted.
        let well_formed = event_id.strip_prefix("evt_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if !well_formed {
            return Err(BillingError::InvalidEventId(event_id.to_owned()).into());
        }
        let path = format!("/events/{event_id}");
        let event = stripe_api::get(&self.client, &path, None::<&()>)
            .await
            .map_err(stripe_error)?;
        apply::receive(db, &self.rules(), &event.to_string()).await
    }
}
