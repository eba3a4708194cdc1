//! The author's commands that talk to a spellhost server over HTTP (`spell publish --server`,
//! `signer add --server`), with an API key, as any client would.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use spellhost::supply_chain::{Signature, SpellBundle};

use super::print_json;

/// Where and as whom: `--server URL` and `--api-key KEY` (or `SPELLHOST_API_KEY`).
pub struct Remote {
    base: String,
    api_key: String,
    client: reqwest::Client,
}

/// A request the server refused: its status and the error's code and message.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Remote {
    pub fn new(server: &str, api_key: Option<&str>) -> anyhow::Result<Remote> {
        let api_key = api_key
            .filter(|key| !key.is_empty())
            .context("give an API key: --api-key, or SPELLHOST_API_KEY in the environment")?;
        anyhow::ensure!(
            server.starts_with("http://") || server.starts_with("https://"),
            "--server must be an http:// or https:// URL, got {server:?}"
        );
        let client = reqwest::Client::builder()
            .user_agent(concat!("spellhost-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTP client")?;
        Ok(Remote {
            base: server.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Result<Value, Refused>> {
        let request = self.client.get(self.url(path)).bearer_auth(&self.api_key);
        self.send(request, path).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Result<Value, Refused>> {
        let request = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .json(body);
        self.send(request, path).await
    }

    /// `POST /v1/spells` with the parts the server reads: `module`, `manifest`, `sbom`,
    /// `signature` or `bundle`, and `sbom_attestation`.
    pub async fn publish(&self, bundle: SpellBundle) -> anyhow::Result<Result<Value, Refused>> {
        use reqwest::multipart::{Form, Part};
        let mut form = Form::new()
            .part(
                "module",
                Part::bytes(bundle.module).file_name("module.wasm"),
            )
            .part("manifest", Part::text(bundle.manifest));
        if !bundle.sbom.is_empty() {
            form = form.part("sbom", Part::bytes(bundle.sbom).file_name("sbom.cdx.json"));
        }
        form = match bundle.signature {
            Some(Signature::Detached(bytes)) => form.part("signature", Part::bytes(bytes)),
            Some(Signature::Sigstore(json)) => form.part(
                "bundle",
                Part::bytes(json).file_name("module.wasm.sigstore.json"),
            ),
            None => form,
        };
        if let Some(attestation) = bundle.sbom_attestation {
            form = form.part(
                "sbom_attestation",
                Part::bytes(attestation).file_name("sbom.cdx.json.sigstore.json"),
            );
        }
        let request = self
            .client
            .post(self.url("/v1/spells"))
            .bearer_auth(&self.api_key)
            .multipart(form);
        self.send(request, "/v1/spells").await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<Result<Value, Refused>> {
        let response = request
            .send()
            .await
            .with_context(|| format!("sending the request to {}", self.url(path)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .context("reading the server's answer")?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(Ok(body));
        }
        let error = &body["error"];
        Ok(Err(Refused {
            status: status.as_u16(),
            code: error["code"].as_str().unwrap_or("http_error").to_owned(),
            message: error["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}: {body}")),
        }))
    }
}

/// Prints a refusal (`code: message` on stderr, or JSON) and returns the failure exit code.
pub fn print_refused(refused: &Refused, json: bool) -> ExitCode {
    if json {
        print_json(
            &json!({"ok": false, "status": refused.status, "code": refused.code,
            "message": refused.message}),
        );
    } else {
        eprintln!(
            "error: {} (HTTP {}): {}",
            refused.code, refused.status, refused.message
        );
    }
    ExitCode::FAILURE
}

/// `spellhost spell publish DIR --server URL`.
pub fn publish(
    server: &str,
    api_key: Option<&str>,
    dir: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let remote = Remote::new(server, api_key)?;
    let bundle = SpellBundle::read_dir(dir).with_context(|| {
        format!(
            "reading the spell directory {} (run `spellhost spell build` first)",
            dir.display()
        )
    })?;
    super::admin::runtime()?.block_on(async move {
        match remote.publish(bundle).await? {
            Ok(published) => {
                if json {
                    print_json(&published);
                } else {
                    println!(
                        "published {}@{} {}",
                        published["spell"].as_str().unwrap_or_default(),
                        published["version"].as_str().unwrap_or_default(),
                        published["digest"].as_str().unwrap_or_default()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(refused) => Ok(print_refused(&refused, json)),
        }
    })
}

/// What `signer add --server` registers.
pub enum RemoteSigner {
    /// A key, with the private key that proves possession (it never leaves this machine).
    Key {
        public_key_pem: String,
        private_key_pem: String,
    },
    Identity {
        identity: Option<String>,
        identity_regex: Option<String>,
        issuer: String,
        sigstore_instance: Option<String>,
    },
}

/// `spellhost signer add --server URL`: `POST /v1/signers`, a key signer with its proof over
/// the caller's handle (read from `GET /v1/users/me`).
pub fn add_signer(
    remote: Remote,
    name: &str,
    signer: RemoteSigner,
    require_signed_sbom: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    super::admin::runtime()?.block_on(async move {
        let mut body = match signer {
            RemoteSigner::Key {
                public_key_pem,
                private_key_pem,
            } => {
                let me = match remote.get("/v1/users/me").await? {
                    Ok(me) => me,
                    Err(refused) => return Ok(print_refused(&refused, json)),
                };
                let handle = me["handle"]
                    .as_str()
                    .context("GET /v1/users/me named no handle")?;
                let message = spellhost::supply_chain::signature::registration_message(handle);
                let proof =
                    spellhost::supply_chain::signature::sign(&private_key_pem, message.as_bytes())
                        .context("signing the proof of possession with --key")?;
                json!({"name": name, "public_key_pem": public_key_pem, "proof": proof})
            }
            RemoteSigner::Identity {
                identity,
                identity_regex,
                issuer,
                sigstore_instance,
            } => json!({
                "name": name, "issuer": issuer, "identity": identity,
                "identity_regex": identity_regex, "sigstore_instance": sigstore_instance,
            }),
        };
        if require_signed_sbom {
            body["require_signed_sbom"] = true.into();
        }
        match remote.post_json("/v1/signers", &body).await? {
            Ok(signer) => {
                if json {
                    print_json(&signer);
                } else {
                    println!("registered signer {name:?} (id {})", signer["id"]);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(refused) => Ok(print_refused(&refused, json)),
        }
    })
}
