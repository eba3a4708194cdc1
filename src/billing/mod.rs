//! Stripe billing: Checkout top-ups and card saving, the billing portal, signed webhooks
//! applied exactly once to the ledger, automatic recharge, and recovery (reconcile, replay).
//!
//! Events are tied to a user only through what spellhost itself created: its Checkout
//! Sessions, its recharge payment intents, and its Stripe customers (see `apply`).

mod account;
mod apply;
mod event;
mod recharge;
mod reconcile;
mod stripe_api;
mod webhook;

use std::collections::HashMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionAdaptivePricing, CreateCheckoutSessionLineItems,
    CreateCheckoutSessionLineItemsPriceData, CreateCheckoutSessionPaymentIntentData,
    CreateCheckoutSessionPaymentIntentDataSetupFutureUsage, ProductData,
};
use stripe_core::customer::CreateCustomer;
use stripe_types::Currency;

pub use account::{AutoRecharge, BillingView, set_auto_recharge, view};
pub use apply::{EventOutcome, ReceiveError, Received, Rules, receive};
pub use event::Unreadable;
pub use recharge::{Recharger, recharge_now, spawn as spawn_recharger};
pub use reconcile::{ReconcileReport, ReconciledEvent};
pub use webhook::{SignatureError, verify_signature};

use crate::auth::{self, User};
use crate::config::{BillingConfig, Config};
use crate::store::{Db, now_ms};

/// The metadata key naming the spellhost user on Stripe objects we create (for people
/// reading the Dashboard; never trusted to tie an event to a user).
pub const USER_METADATA_KEY: &str = "spellhost_user_id";

/// The metadata key carrying a recharge's random id on its payment intent.
pub const RECHARGE_METADATA_KEY: &str = "spellhost_recharge_id";

/// How long one request to Stripe may take. Bounded so a hung connection cannot stall the
/// recharge worker or a checkout for long; Stripe answers in well under a second.
const STRIPE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("amount must be between {min} and {max} cents")]
    AmountOutOfRange { min: i64, max: i64 },
    #[error("no billing account yet: complete a checkout first")]
    NoBillingAccount,
    #[error("no saved payment method: save a card first (POST /v1/billing/payment-method)")]
    NoPaymentMethod,
    #[error("{0}")]
    InvalidAutoRecharge(String),
    #[error("{0:?} is not a Stripe event id")]
    InvalidEventId(String),
    /// The event is recorded but not applied: the reason is kept for the operator.
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("Stripe: {0}")]
    Stripe(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Money(#[from] crate::money::MoneyError),
    #[error("{0}")]
    Internal(String),
}

fn stripe_error(error: stripe::StripeError) -> BillingError {
    BillingError::Stripe(match error {
        stripe::StripeError::Stripe(api, status) => format!(
            "{status} {}: {}",
            api.type_.as_str(),
            api.message.as_deref().unwrap_or("no message")
        ),
        other => other.to_string(),
    })
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Checkout {
    pub checkout_url: String,
    pub session_id: String,
}

pub struct Billing {
    client: stripe::Client,
    config: BillingConfig,
    public_url: String,
    topup_min_cents: i64,
    topup_max_cents: i64,
}

impl Billing {
    /// `None` when Stripe is not configured (billing endpoints then answer 503).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Billing>> {
        let Some(billing) = config.billing.clone() else {
            return Ok(None);
        };
        let mut builder = stripe::ClientBuilder::new(billing.stripe_secret_key.expose_secret());
        if let Some(base) = &billing.api_base {
            // The client appends `v1/...` to the base: it needs exactly one trailing slash.
            builder = builder.url(format!("{}/", base.trim_end_matches('/')));
        }
        let client = builder
            .timeout(STRIPE_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("SPELLHOST_STRIPE_API_BASE: {e}"))?;
        Ok(Some(Billing {
            client,
            config: billing,
            public_url: config.public_url.clone(),
            topup_min_cents: config.topup_min_cents,
            topup_max_cents: config.topup_max_cents,
        }))
    }

    /// What the configuration allows an event to do.
    pub fn rules(&self) -> Rules {
        Rules {
            accepted_versions: self.config.api_versions.clone(),
            amount_max_cents: self.config.event_amount_max_cents,
        }
    }

    pub fn topup_cents(&self) -> std::ops::RangeInclusive<i64> {
        self.topup_min_cents..=self.topup_max_cents
    }

    pub fn webhook_secrets(&self) -> impl Iterator<Item = &str> {
        self.config
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret())
    }

    /// The user's Stripe customer, created (and recorded) on first use.
    async fn customer_for(&self, db: &Db, user: &User) -> Result<String, BillingError> {
        if let Some(customer) = &user.stripe_customer_id {
            return Ok(customer.clone());
        }
        let metadata = HashMap::from([
            (USER_METADATA_KEY.to_owned(), user.id.to_string()),
            ("spellhost_handle".to_owned(), user.handle.clone()),
        ]);
        let customer = CreateCustomer::new()
            .email(user.email.as_str())
            .metadata(metadata)
            .send(&self.client)
            .await
            .map_err(stripe_error)?;
        let id = customer.id.as_str().to_owned();
        // Two first checkouts racing create two customers; the first recorded wins and the
        // other stays unused at Stripe.
        sqlx::query(
            "UPDATE users SET stripe_customer_id = $1 WHERE id = $2 AND stripe_customer_id IS NULL",
        )
        .bind(&id)
        .bind(user.id)
        .execute(db.writer())
        .await?;
        let stored = auth::user_by_id(db, user.id)
            .await
            .map_err(|e| BillingError::Internal(e.to_string()))?
            .and_then(|u| u.stripe_customer_id);
        Ok(stored.unwrap_or(id))
    }

    /// A Checkout Session in payment mode for `amount_cents` of credit; with
    /// `save_payment_method` the card is kept for automatic recharges
    /// (`setup_future_usage=off_session`).
    pub async fn checkout(
        &self,
        db: &Db,
        user: &User,
        amount_cents: i64,
        save_payment_method: bool,
    ) -> Result<Checkout, BillingError> {
        if !self.topup_cents().contains(&amount_cents) {
            return Err(BillingError::AmountOutOfRange {
                min: self.topup_min_cents,
                max: self.topup_max_cents,
            });
        }
        let customer = self.customer_for(db, user).await?;
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(Currency::USD);
        price.unit_amount = Some(amount_cents);
        price.product_data = Some(ProductData::new("spellhost credit"));
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price_data = Some(price);
        item.quantity = Some(1);
        // Adaptive Pricing would present another currency: the credit is what was paid in USD.
        let mut adaptive_pricing = CreateCheckoutSessionAdaptivePricing::new();
        adaptive_pricing.enabled = Some(false);
        let mut request = self
            .session_request(CheckoutSessionMode::Payment, user, customer)
            .adaptive_pricing(adaptive_pricing)
            .line_items(vec![item]);
        if save_payment_method {
            let mut intent = CreateCheckoutSessionPaymentIntentData::new();
            intent.setup_future_usage =
                Some(CreateCheckoutSessionPaymentIntentDataSetupFutureUsage::OffSession);
            request = request.payment_intent_data(intent);
        }
        let session = request.send(&self.client).await.map_err(stripe_error)?;
        let checkout = checkout_of(session.id.as_str(), session.url)?;
        sqlx::query(
            "INSERT INTO checkout_sessions (id, user_id, amount_cents, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&checkout.session_id)
        .bind(user.id)
        .bind(amount_cents)
        .bind(now_ms())
        .execute(db.writer())
        .await?;
        Ok(checkout)
    }

    /// A Checkout Session in setup mode: saves a card for automatic recharges, charging
    /// nothing. The card is saved when its `setup_intent.succeeded` arrives.
    pub async fn save_payment_method(
        &self,
        db: &Db,
        user: &User,
    ) -> Result<Checkout, BillingError> {
        let customer = self.customer_for(db, user).await?;
        let session = self
            .session_request(CheckoutSessionMode::Setup, user, customer)
            .currency(Currency::USD)
            .send(&self.client)
            .await
            .map_err(stripe_error)?;
        checkout_of(session.id.as_str(), session.url)
    }

    fn session_request(
        &self,
        mode: CheckoutSessionMode,
        user: &User,
        customer: String,
    ) -> CreateCheckoutSession {
        CreateCheckoutSession::new()
            .mode(mode)
            .customer(customer)
            .client_reference_id(user.id.to_string())
            .metadata(HashMap::from([(
                USER_METADATA_KEY.to_owned(),
                user.id.to_string(),
            )]))
            .success_url(format!(
                "{}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
                self.public_url
            ))
            .cancel_url(format!("{}/billing/cancel", self.public_url))
    }

    /// A billing portal session for the user's customer.
    pub async fn portal(&self, user: &User) -> Result<String, BillingError> {
        let customer = user
            .stripe_customer_id
            .as_deref()
            .ok_or(BillingError::NoBillingAccount)?;
        let session = CreateBillingPortalSession::new()
            .customer(customer)
            .return_url(format!("{}/", self.public_url))
            .send(&self.client)
            .await
            .map_err(stripe_error)?;
        Ok(session.url)
    }
}

fn checkout_of(session_id: &str, url: Option<String>) -> Result<Checkout, BillingError> {
    let url = url.ok_or_else(|| BillingError::Stripe("the Checkout Session has no URL".into()))?;
    Ok(Checkout {
        checkout_url: url,
        session_id: session_id.to_owned(),
    })
}
