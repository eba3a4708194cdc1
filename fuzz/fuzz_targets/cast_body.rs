//! `POST /v1/cast` bodies through the real router (auth, body limit, JSON extraction, the cast
//! body's parsing into a `CastRequest`, and the cast itself when the body names `demo/hello`),
//! against an SQLite database in a temporary directory. Whatever the body, the answer is never
//! a 500 and always the one error shape when it is not a 2xx.
#![no_main]

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use spellhost::money::{EntryKind, MicroUsd};
use spellhost::registry::NewSigner;
use spellhost::supply_chain::SpellBundle;
use spellhost_fuzz::repo_path;
use tower::ServiceExt as _;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    key: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let data_dir = tempfile::tempdir().expect("tempdir").keep();
    let data = data_dir.display().to_string();
    let database = format!("sqlite://{data}/spellhost.db");
    let config = spellhost::config::Config::from_vars(&[
        ("SPELLHOST_DATA_DIR", data.as_str()),
        ("SPELLHOST_DATABASE_URL", database.as_str()),
        (
            "SPELLHOST_SECRET_KEY",
            "fuzz-secret-fuzz-secret-fuzz-secret-0123",
        ),
        ("SPELLHOST_WORKERS", "1"),
        // hello's own limits: a limit above the host maximum is refused at publish.
        ("SPELLHOST_WALL_MS_MAX", "2000"),
        ("SPELLHOST_FUEL_MAX", "50000000"),
        ("SPELLHOST_INPUT_BYTES_MAX", "65536"),
    ])
    .expect("config");
    let (router, key) = runtime.block_on(async {
        let app = spellhost::AppState::build(config).await.expect("app");
        let user = spellhost::auth::create_user(&app.db, "demo", "demo@example.com", false)
            .await
            .expect("user");
        spellhost::money::post(
            &app.db,
            user.id,
            EntryKind::Grant,
            MicroUsd::new(1 << 50),
            "fuzz",
        )
        .await
        .expect("credit");
        let public_key_pem =
            std::fs::read_to_string(repo_path("spells/demo-key/spell.pub")).expect("demo key");
        app.registry
            .add_signer(
                user.id,
                "demo",
                NewSigner::Key { public_key_pem },
                false,
            )
            .await
            .expect("signer");
        let bundle = SpellBundle::read_dir(&repo_path("spells/hello")).expect("example");
        app.registry
            .publish(user.id, "demo", bundle)
            .await
            .expect("publish");
        let (key, _) = app
            .auth
            .create_key(user.id, &spellhost::auth::KeySpec::unrestricted("fuzz"))
            .await
            .expect("key");
        (spellhost::http::router(app), key.expose().to_owned())
    });
    Fixture {
        runtime,
        router,
        key,
    }
});

fuzz_target!(|body: &[u8]| {
    let fixture = &*FIXTURE;
    let request = Request::post("/v1/cast")
        .header(header::AUTHORIZATION, format!("Bearer {}", fixture.key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    let (status, answer) = fixture.runtime.block_on(async {
        let response = fixture
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .expect("body");
        (status, bytes)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let json: serde_json::Value = serde_json::from_slice(&answer).expect("every answer is JSON");
    if !status.is_success() {
        assert!(
            json["error"]["code"].is_string(),
            "the one error shape: {json}"
        );
    }
});
