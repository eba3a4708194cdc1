//! Stripe billing: Checkout top-ups, the billing portal, and signed webhooks applied exactly
//! once to the ledger.
//!
//! Events are tied to a user only through what spellhost itself set or recorded: the Checkout
//! Session it created (and its `client_reference_id`/metadata), the Stripe customer it created,
//! and the payment intent recorded when that user's checkout completed.

mod events;
mod webhook;

use std::collections::HashMap;

use secrecy::ExposeSecret;
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    ProductData,
};
use stripe_core::customer::CreateCustomer;
use stripe_types::Currency;

pub use events::{EventOutcome, apply_event};
pub use webhook::{SignatureError, Verified, verify_signature};

use crate::auth::{self, User};
use crate::config::{BillingConfig, Config};
use crate::store::{Db, now_ms};

/// The metadata key naming the spellhost user on Stripe objects we create.
pub const USER_METADATA_KEY: &str = "spellhost_user_id";

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("amount must be between {min} and {max} cents")]
    AmountOutOfRange { min: i64, max: i64 },
    #[error("no billing account yet: complete a checkout first")]
    NoBillingAccount,
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

#[derive(Debug, Clone, serde::Serialize)]
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

    /// A Checkout Session in payment mode for `amount_cents` of credit.
    pub async fn checkout(
        &self,
        db: &Db,
        user: &User,
        amount_cents: i64,
    ) -> Result<Checkout, BillingError> {
        if !(self.topup_min_cents..=self.topup_max_cents).contains(&amount_cents) {
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
        let session = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
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
            .line_items(vec![item])
            .send(&self.client)
            .await
            .map_err(stripe_error)?;
        let url = session
            .url
            .ok_or_else(|| BillingError::Stripe("the Checkout Session has no URL".into()))?;
        let id = session.id.as_str().to_owned();
        sqlx::query(
            "INSERT INTO checkout_sessions (id, user_id, amount_cents, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(user.id)
        .bind(amount_cents)
        .bind(now_ms())
        .execute(db.writer())
        .await?;
        Ok(Checkout {
            checkout_url: url,
            session_id: id,
        })
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
