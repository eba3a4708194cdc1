//! `/v1/budgets`: spending limits per scope and period, and `/v1/budgets/usage`: where the
//! money went.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::money::budgets::{self, Condition, GroupBy, Limits, Period, Scope, Usage};
use crate::money::{Budget, MoneyError};
use crate::registry::SpellRef;
use crate::store::parse_rfc3339;

/// A budget's scope type.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[expect(dead_code, reason = "a schema: read and shown as JSON by hand")]
pub enum ScopeType {
    Account,
    Key,
    Spell,
}

/// A calendar period (UTC), or `total`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[expect(dead_code, reason = "a schema: read and shown as JSON by hand")]
pub enum PeriodName {
    Day,
    Week,
    Month,
    Total,
}

/// How usage is grouped.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[expect(dead_code, reason = "a schema: read as a query parameter by hand")]
pub enum GroupByName {
    Day,
    Spell,
    Key,
}

/// What a budget applies to. Fields of other scope types are ignored.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[expect(dead_code, reason = "a schema: read and shown as JSON by hand")]
pub enum BudgetScope {
    Account,
    Key {
        /// One of the caller's live keys.
        key_prefix: String,
    },
    Spell {
        /// `owner/name`, an existing spell.
        #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,38}/[a-z0-9-]{1,64}$")]
        spell: String,
    },
}

/// `POST` and `PUT /v1/budgets`' body: the budget of a scope and period, and its limits.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: read as JSON by hand")]
pub struct BudgetBody {
    scope: BudgetScope,
    period: PeriodName,
    /// Casts are refused (402 `spend_limit_reached`) past it.
    #[schema(minimum = 1)]
    hard_limit_microusd: i64,
    /// Casts are answered with a `Spellhost-Budget-Warning` header past it; at most the hard
    /// limit.
    #[schema(minimum = 1)]
    soft_limit_microusd: Option<i64>,
}

/// `PUT /v1/budgets/{id}`'s body.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: read as JSON by hand")]
pub struct LimitsBody {
    #[schema(minimum = 1)]
    hard_limit_microusd: i64,
    /// At most the hard limit.
    #[schema(minimum = 1)]
    soft_limit_microusd: Option<i64>,
}

/// A budget as shown (`Budget::to_json`); `held_microusd` is what casts in flight hold.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built by `Budget::to_json`")]
pub struct BudgetView {
    id: String,
    scope: BudgetScope,
    period: PeriodName,
    hard_limit_microusd: i64,
    soft_limit_microusd: Option<i64>,
    used_microusd: i64,
    held_microusd: i64,
    remaining_microusd: i64,
    #[schema(format = DateTime)]
    period_start: String,
    /// `null` for `total`.
    #[schema(format = DateTime)]
    period_end: Option<String>,
    soft_limit_reached: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// `GET /v1/budgets`' answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct BudgetList {
    budgets: Vec<BudgetView>,
}

/// One group of `GET /v1/budgets/usage`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// The day (`YYYY-MM-DD`), the spell or the key prefix.
    group: String,
    #[serde(flatten)]
    usage: budgets::UsageGroup,
}

/// `GET /v1/budgets/usage`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built by `Usage::to_json`")]
pub struct UsageView {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    group_by: GroupByName,
    total: budgets::UsageGroup,
    groups: Vec<UsageRow>,
}

/// A 422 `invalid_budget` naming the field.
fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidBudget, format!("{field}: {}", message.into())).with("field", field)
}

fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such budget")
}

/// A budget as the client sees it (held = what casts in flight hold).
async fn shown(app: &App, budget: &Budget) -> Result<Value, ApiError> {
    let in_flight = app.money.in_flight(&app.db, budget.user_id).await?;
    Ok(in_flight.show(budget).to_json())
}

fn money_error(error: MoneyError) -> ApiError {
    match error {
        MoneyError::UnknownBudget => not_found(),
        MoneyError::Conflict => ApiError::new(
            Code::Conflict,
            "the budget was changed by a concurrent request; retry",
        ),
        other => other.into(),
    }
}

/// The scope object of a request, resolved against what the caller owns: a key prefix must be
/// one of the caller's live keys, a spell must exist.
async fn scope(app: &App, caller: &Caller, value: Option<&Value>) -> Result<Scope, ApiError> {
    let Some(object) = value.and_then(Value::as_object) else {
        return Err(invalid("scope", "an object with a type is required"));
    };
    let text = |field: &str| object.get(field).and_then(Value::as_str);
    match text("type") {
        Some("account") => Ok(Scope::Account),
        Some("key") => {
            let prefix = text("key_prefix")
                .ok_or_else(|| invalid("scope.key_prefix", "required for a key scope"))?;
            let key_id = app
                .auth
                .key_id_of(caller.user_id, prefix)
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| invalid("scope.key_prefix", "not one of your API keys"))?;
            Ok(Scope::Key { key_id })
        }
        Some("spell") => {
            let name = text("spell")
                .ok_or_else(|| invalid("scope.spell", "required for a spell scope"))?;
            let spell: SpellRef = name
                .parse()
                .ok()
                .filter(|spell: &SpellRef| spell.version.is_none())
                .ok_or_else(|| invalid("scope.spell", "must be owner/name"))?;
            match app.registry.versions(&spell.owner, &spell.name).await {
                Ok(_) => Ok(Scope::Spell {
                    spell: format!("{}/{}", spell.owner, spell.name),
                }),
                Err(crate::registry::RegistryError::NotFound(_)) => {
                    Err(invalid("scope.spell", format!("no spell {name}")))
                }
                Err(other) => Err(other.into()),
            }
        }
        Some(other) => Err(invalid(
            "scope.type",
            format!("unknown scope type {other:?}; use account, key or spell"),
        )),
        None => Err(invalid("scope.type", "required")),
    }
}

fn period(value: Option<&Value>) -> Result<Period, ApiError> {
    let text = value
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("period", "required: day, week, month or total"))?;
    Period::parse(text).ok_or_else(|| {
        invalid(
            "period",
            format!("unknown period {text:?}; use day, week, month or total"),
        )
    })
}

fn limits(body: &Value) -> Result<Limits, ApiError> {
    let amount = |field: &str| -> Result<Option<i64>, ApiError> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(field, "must be an integer number of micro-dollars")),
        }
    };
    let hard =
        amount("hard_limit_microusd")?.ok_or_else(|| invalid("hard_limit_microusd", "required"))?;
    let soft = amount("soft_limit_microusd")?;
    Limits::new(hard, soft).map_err(|e| invalid(e.field, e.message))
}

/// `GET /v1/budgets`
#[utoipa::path(
    get,
    path = "/v1/budgets",
    tag = "budgets",
    responses((status = 200, description = "The caller's budgets.", body = BudgetList)),
)]
pub async fn list(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    let budgets = budgets::list(&app.db, caller.user_id, app.db.now_ms()).await?;
    let in_flight = app.money.in_flight(&app.db, caller.user_id).await?;
    let budgets: Vec<Value> = budgets
        .iter()
        .map(|b| in_flight.show(b).to_json())
        .collect();
    Ok(axum::Json(json!({ "budgets": budgets })))
}

/// `POST /v1/budgets`: creates (201) or, when one exists for the scope and period, updates
/// its limits (200).
#[utoipa::path(
    post,
    path = "/v1/budgets",
    tag = "budgets",
    request_body = BudgetBody,
    responses(
        (status = 200, description = "The scope and period had a budget: its limits were replaced.", body = BudgetView),
        (status = 201, description = "Created.", body = BudgetView),
        (status = 409, description = "`conflict`: changed by a concurrent request; retry.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_budget`, naming the `field`.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let scope = scope(&app, &caller, body.get("scope")).await?;
    let period = period(body.get("period"))?;
    let limits = limits(&body)?;
    let (budget, created) = budgets::upsert(
        &app.db,
        caller.user_id,
        &scope,
        period,
        limits,
        app.db.now_ms(),
    )
    .await
    .map_err(money_error)?;
    app.money.invalidate(caller.user_id);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(shown(&app, &budget).await?)))
}

/// `PUT /v1/budgets/{id}`: replaces the limits.
#[utoipa::path(
    put,
    path = "/v1/budgets/{id}",
    tag = "budgets",
    params(("id" = String, Path, description = "The budget's id.")),
    request_body = LimitsBody,
    responses(
        (status = 200, description = "Replaced.", body = BudgetView),
        (status = 404, description = "`not_found`: the caller has no such budget.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`conflict`: changed by a concurrent request; retry.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_budget`, naming the `field`.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn update(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let limits = limits(&body)?;
    let budget = budgets::update(
        &app.db,
        caller.user_id,
        Condition::Id(&id),
        limits,
        app.db.now_ms(),
    )
    .await
    .map_err(money_error)?
    .ok_or_else(not_found)?;
    app.money.invalidate(caller.user_id);
    Ok(axum::Json(shown(&app, &budget).await?))
}

/// `PUT /v1/budgets` with `scope` and `period` in the body: replaces that budget's limits.
#[utoipa::path(
    put,
    path = "/v1/budgets",
    tag = "budgets",
    request_body = BudgetBody,
    responses(
        (status = 200, description = "Replaced.", body = BudgetView),
        (status = 404, description = "`not_found`: the scope and period have no budget.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`conflict`: changed by a concurrent request; retry.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_budget`, naming the `field`.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn update_by_scope(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let scope = scope(&app, &caller, body.get("scope")).await?;
    let period = period(body.get("period"))?;
    let limits = limits(&body)?;
    let condition = Condition::ScopePeriod(&scope, period);
    let budget = budgets::update(&app.db, caller.user_id, condition, limits, app.db.now_ms())
        .await
        .map_err(money_error)?
        .ok_or_else(not_found)?;
    app.money.invalidate(caller.user_id);
    Ok(axum::Json(shown(&app, &budget).await?))
}

/// `DELETE /v1/budgets/{id}`
#[utoipa::path(
    delete,
    path = "/v1/budgets/{id}",
    tag = "budgets",
    params(("id" = String, Path, description = "The budget's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: the caller has no such budget.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted = budgets::delete(&app.db, caller.user_id, Condition::Id(&id)).await?;
    app.money.invalidate(caller.user_id);
    match deleted {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found()),
    }
}

/// `DELETE /v1/budgets?scope=account&period=month` (also `scope=key&key_prefix=…` and
/// `scope=spell&spell=owner/name`).
#[utoipa::path(
    delete,
    path = "/v1/budgets",
    tag = "budgets",
    params(
        ("scope" = inline(ScopeType), Query, description = "`key` needs `key_prefix`; `spell` needs `spell`."),
        ("period" = inline(PeriodName), Query),
        ("key_prefix" = Option<String>, Query, description = "For `scope=key`: one of the caller's keys."),
        ("spell" = Option<String>, Query, description = "For `scope=spell`: `owner/name`."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: the scope and period have no budget.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_budget`, naming the `field`.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn delete_by_scope(
    State(app): State<App>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let mut object = serde_json::Map::new();
    for (field, name) in [
        ("type", "scope"),
        ("key_prefix", "key_prefix"),
        ("spell", "spell"),
    ] {
        if let Some(value) = query.get(name) {
            object.insert(field.into(), value.clone().into());
        }
    }
    let scope = scope(&app, &caller, Some(&Value::Object(object))).await?;
    let period = period(
        query
            .get("period")
            .map(|p| Value::String(p.clone()))
            .as_ref(),
    )?;
    let condition = Condition::ScopePeriod(&scope, period);
    let deleted = budgets::delete(&app.db, caller.user_id, condition).await?;
    app.money.invalidate(caller.user_id);
    match deleted {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found()),
    }
}

/// `GET /v1/budgets/usage?from=&to=&group_by=day|spell|key`: the caller's spend over a time
/// range (default: the current month, UTC), in total and per group, by outcome too.
#[utoipa::path(
    get,
    path = "/v1/budgets/usage",
    tag = "budgets",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339; the current month's start (UTC) when absent."),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, not before `from`; the current month's end when absent."),
        ("group_by" = inline(Option<GroupByName>), Query, description = "`day` when absent."),
    ),
    responses((status = 200, description = "The caller's spend over the range, in total and per group, by outcome too.", body = UsageView)),
)]
pub async fn usage(
    State(app): State<App>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let now = app.db.now_ms();
    let time = |name: &str, default: i64| -> Result<i64, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => parse_rfc3339(text)
                .ok_or_else(|| ApiError::bad_request(format!("{name} is not an RFC 3339 time"))),
        }
    };
    let (month_start, month_end) = Usage::current_month(now);
    let from = time("from", month_start)?;
    let to = time("to", month_end)?;
    if to < from {
        return Err(ApiError::bad_request("to is before from"));
    }
    let group_by = match query.get("group_by") {
        None => GroupBy::Day,
        Some(text) => GroupBy::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!("group_by {text:?}: use day, spell or key"))
        })?,
    };
    let usage = budgets::usage(&app.db, caller.user_id, from, to, group_by).await?;
    Ok(axum::Json(usage.to_json()))
}
