use axum::extract::State;
use serde_json::{Value, json};

use crate::App;
use crate::auth::{self, Caller};
use crate::error::ApiError;

/// `GET /v1/users/me`
pub async fn me(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    let user = auth::user_by_id(&app.db, caller.user_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(ApiError::unauthorized)?;
    // What casts in flight hold, not the unused part of this instance's leases.
    let held = app
        .money
        .in_flight(&app.db, caller.user_id)
        .await?
        .balance
        .get();
    Ok(axum::Json(json!({
        "handle": user.handle,
        "email": user.email,
        "is_admin": user.is_admin,
        "balance_microusd": user.balance_microusd,
        "held_microusd": held,
        "available_microusd": user.balance_microusd - held,
    })))
}
