//! `spellhost serve --demo`: a newcomer's first run. A demo user with $10.00 of demo credit and
//! a fresh API key, the demo signer registered, the example spells published, and a
//! ready-to-paste `curl` line.

use std::net::SocketAddr;

use spellhost::AppState;
use spellhost::auth;
use spellhost::money::{self, EntryKind, MicroUsd};
use spellhost::registry::{NewSigner, RegistryError};
use spellhost::supply_chain::{Signature, SpellBundle};

const DEMO_HANDLE: &str = "demo";
/// $10: every example's worst case fits several times over. A cast holds its whole wall limit
/// of blocked time (`hello`: 2 s × 700 µ$/ms = $1.40 at the default price), and a balance that
/// could not hold one would answer the newcomer's first cast with a 402.
const DEMO_CREDIT: MicroUsd = MicroUsd::new(10_000_000);

/// The demo signer's public key and the example spells, built into the binary so the demo
/// works from any directory.
const DEMO_PUBLIC_KEY: &str = include_str!("../../spells/demo-key/spell.pub");

macro_rules! example {
    ($name:literal) => {
        SpellBundle {
            module: include_bytes!(concat!("../../spells/", $name, "/module.wasm")).to_vec(),
            manifest: include_str!(concat!("../../spells/", $name, "/spell.toml")).to_owned(),
            sbom: include_bytes!(concat!("../../spells/", $name, "/sbom.cdx.json")).to_vec(),
            signature: Some(Signature::Detached(
                include_bytes!(concat!("../../spells/", $name, "/module.wasm.sig")).to_vec(),
            )),
            sbom_attestation: None,
        }
    };
}

pub async fn setup(app: &AppState, address: SocketAddr) -> anyhow::Result<()> {
    let user = match auth::user_by_handle(&app.db, DEMO_HANDLE).await? {
        Some(user) => user,
        None => {
            let user = auth::create_user(&app.db, DEMO_HANDLE, "demo@example.com", false).await?;
            money::post(
                &app.db,
                user.id,
                EntryKind::Grant,
                DEMO_CREDIT,
                "demo credit",
            )
            .await?;
            user
        }
    };
    if app.registry.signers(user.id).await?.is_empty() {
        app.registry
            .add_signer(
                user.id,
                "demo",
                NewSigner::Key {
                    public_key_pem: DEMO_PUBLIC_KEY.to_owned(),
                },
                false,
            )
            .await?;
    }
    for bundle in [example!("hello"), example!("wordfreq"), example!("primes")] {
        match app.registry.publish(user.id, &user.handle, bundle).await {
            Ok(_) | Err(RegistryError::VersionExists(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let (key, _) = app
        .auth
        .create_key(user.id, &spellhost::auth::KeySpec::unrestricted("demo"))
        .await?;
    let balance = money::balance(&app.db, user.id).await?;
    let host = if address.ip().is_unspecified() {
        format!("127.0.0.1:{}", address.port())
    } else {
        address.to_string()
    };
    eprintln!(
        "\nDemo ready: user {DEMO_HANDLE:?}, balance {}, spells demo/hello, demo/wordfreq, demo/primes.\n\
         Cast your first spell:\n\n\
         curl -s http://{host}/v1/cast -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n  \
         -d '{{\"spell\":\"demo/hello\",\"input\":{{\"name\":\"Ada\"}}}}'\n",
        balance.balance,
        key.expose()
    );
    Ok(())
}
