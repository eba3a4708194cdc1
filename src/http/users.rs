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
    // The database counts this instance's leases as held; only what casts in flight hold
    // (here, or leased by other instances) is shown as held.
    let held = user.held_microusd - app.money.leased_free(caller.user_id).get();
    Ok(axum::Json(json!({
        "handle": user.handle,
        "email": user.email,
        "is_admin": user.is_admin,
        "balance_microusd": user.balance_microusd,
        "held_microusd": held,
        "available_microusd": user.balance_microusd - held,
    })))
}
