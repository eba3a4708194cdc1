//! The OpenAPI 3.1 document, generated from the code: each handler describes itself with
//! `#[utoipa::path]` (path, parameters, body, success and handler-specific error responses),
//! and `router.rs` adds what its route list decides (the security requirement and scope, the
//! errors of authentication, idempotency and body limits), so the document and the router come
//! from one list. Served at `GET /openapi.json`, printed by `spellhost openapi`, committed as
//! `docs/openapi.json` (a test fails when that copy is stale).

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, Paths, Ref, RefOr, ResponseBuilder, Type,
};
use utoipa::{Modify, ToSchema};

use crate::auth::KeyScope;
use crate::error::Code;

/// The security scheme of every `/v1` route: `Authorization: Bearer <API key>`.
pub const API_KEY: &str = "api_key";
/// `/metrics` when `SPELLHOST_METRICS_TOKEN` is set: `Authorization: Bearer <token>`.
pub const METRICS_TOKEN: &str = "metrics_token";

/// The one error shape: `{"error":{"code","message","trace_id", …}}`.
#[derive(ToSchema)]
#[schema(as = Error)]
#[expect(dead_code, reason = "a schema: the body is built by `ApiError::body`")]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong. Some codes carry more fields beside these (a cast's charge, a 402's quote,
/// `limit_reached`'s `limit` and `max`, …).
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built by `ApiError::body`")]
pub struct ErrorDetail {
    /// A stable, machine-readable code (see `ErrorCode`).
    #[schema(schema_with = error_code)]
    code: String,
    message: String,
    /// Quote it when reporting a problem; also in the `x-trace-id` response header.
    trace_id: String,
}

/// Every stable error code a client can see (`crate::error::Code::STABLE`).
fn error_code() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Code::STABLE.iter().copied()))
}

/// The base document: info, tags, security schemes and the shared schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "spellhost",
        description = "Runs signed WebAssembly spells on demand and bills them by the instruction. \
            Every error is `{\"error\":{\"code\",\"message\",\"trace_id\"}}` with a stable code. \
            Amounts are integer micro-dollars (µ$).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            API_KEY,
            bearer(
                "An API key (`spk_…`). Each route needs one scope of the key (cast, publish, read, \
                 manage), named in the route's security requirement.",
            ),
        );
        components.add_security_scheme(
            METRICS_TOKEN,
            bearer("`SPELLHOST_METRICS_TOKEN`, when the operator sets one."),
        );
    }
}

/// The document, built once (it depends on the code only, never on configuration).
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut text = super::router::document()
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"));
    text.push('\n');
    text
});

/// The OpenAPI document as pretty JSON with a final newline (`docs/openapi.json`).
pub fn json() -> &'static str {
    &DOCUMENT
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json(),
    )
        .into_response()
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Names every operation after its method and path (`delete_keys_prefix`): handlers' names
/// repeat across modules (`list`, `delete`), and an operation id must be unique.
pub fn name_operations(openapi: &mut OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let slug: Vec<&str> = path
            .split(['/', '{', '}', '.', '-'])
            .filter(|part| !part.is_empty() && *part != "v1")
            .collect();
        let slug = slug.join("_");
        for (method, operation) in [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ] {
            if let Some(operation) = operation {
                operation.operation_id = Some(format!("{method}_{slug}"));
            }
        }
    }
}

/// Every operation of every path.
fn each_operation(paths: &mut Paths, mut edit: impl FnMut(&mut Operation)) {
    for item in paths.paths.values_mut() {
        operations(item).for_each(&mut edit);
    }
}

/// An error response in the one shape; `description` names the codes.
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build(),
    )
}

/// Adds an error response unless the handler described that status itself.
fn add_error(operation: &mut Operation, status: u16, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

/// An authenticated route: the API key with `scope`, and what authentication can answer.
pub fn secured(paths: &mut Paths, scope: KeyScope) {
    each_operation(paths, |operation| {
        let requirement = SecurityRequirement::new(API_KEY, [scope.as_str()]);
        operation.security = Some(vec![requirement]);
        add_error(
            operation,
            401,
            "`unauthorized`: no API key, or one that is malformed, unknown, revoked or expired.",
        );
        add_error(
            operation,
            403,
            "`insufficient_scope`: the key lacks the route's scope (named in `required_scope`).",
        );
        add_error(
            operation,
            503,
            "`overloaded`: too many new keys are being checked; retry after `Retry-After` seconds.",
        );
    });
}

/// A route that honours `Idempotency-Key`.
pub fn idempotent(paths: &mut Paths) {
    each_operation(paths, |operation| {
        let parameter = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .description(Some(
                "Replays the first answer for 24 h to a retry with the same key (per user); \
                 at most 255 printable ASCII characters.",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(255))
                    .pattern(Some("^[\\x20-\\x7E]+$")),
            ))
            .build();
        operation
            .parameters
            .get_or_insert_with(Vec::new)
            .push(parameter);
        add_error(
            operation,
            400,
            "`idempotency_key_invalid`, or a malformed request (`bad_request`).",
        );
        add_error(
            operation,
            409,
            "`idempotency_key_in_use`: the first request with this key is still running.",
        );
        add_error(
            operation,
            422,
            "`idempotency_key_reused`: the key was used for a different request.",
        );
    });
}

/// A route with a body limit.
pub fn limited(paths: &mut Paths) {
    each_operation(paths, |operation| {
        add_error(
            operation,
            413,
            "`payload_too_large`: the body is over the route's limit.",
        );
    });
}

/// What every route can answer: a malformed request where it takes input, a rate limit
/// (unless the route is exempt), and the opaque internal error.
pub fn common(paths: &mut Paths, rate_limited: bool) {
    each_operation(paths, |operation| {
        let takes_input = operation.request_body.is_some()
            || operation
                .parameters
                .as_ref()
                .is_some_and(|parameters| !parameters.is_empty());
        if takes_input {
            add_error(
                operation,
                400,
                "`bad_request`: a parameter or the body is malformed.",
            );
        }
        if operation.request_body.is_some() {
            add_error(
                operation,
                415,
                "`unsupported_media_type`: the body is not of the documented type.",
            );
        }
        if rate_limited {
            add_error(
                operation,
                429,
                "`rate_limited`: over a rate limit; retry after `Retry-After` seconds.",
            );
        }
        add_error(
            operation,
            500,
            "`internal`: an unexpected failure (logged with the trace id).",
        );
    });
}
