//! A private Sigstore instance for tests: a Rekor (v1) transparency log with its own P-256 key,
//! and the `trusted_root.json` that names it. It writes managed-key bundles exactly as `cosign
//! sign-blob --key … --bundle` does against a real Rekor: a `hashedrekord` 0.0.1 entry over the
//! artifact's digest, its signed entry timestamp (SET), and an inclusion proof against a signed
//! checkpoint. Nothing is faked on the verifying side: the bundles go through the same
//! `sigstore-verify` checks as the public-good instance's.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use spellhost::supply_chain::signature;

/// The log's origin line and signer name in its checkpoints.
const LOG_NAME: &str = "rekor.spellhost.test";

pub struct FakeSigstore {
    log_private_pem: String,
    log_public_der: Vec<u8>,
    /// Entries already in the log: every bundle gets the next index.
    next_index: AtomicU64,
}

/// RFC 6962 hashes.
fn leaf_hash(data: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(data)
        .finalize()
        .into()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

fn der_of(public_pem: &str) -> Vec<u8> {
    pem::parse(public_pem)
        .expect("public key PEM")
        .contents()
        .to_vec()
}

impl FakeSigstore {
    pub fn new() -> Self {
        let (log_private_pem, log_public_pem) = signature::generate_key_pair().expect("log key");
        FakeSigstore {
            log_public_der: der_of(&log_public_pem),
            log_private_pem,
            next_index: AtomicU64::new(1),
        }
    }

    /// The log's id: SHA-256 of its DER public key (as Rekor and the trusted root name it).
    fn log_id(&self) -> [u8; 32] {
        Sha256::digest(&self.log_public_der).into()
    }

    /// `trusted_root.json` for this instance: its log, and no Fulcio (managed keys only).
    pub fn trusted_root(&self) -> String {
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": format!("https://{LOG_NAME}"),
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(&self.log_public_der),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"}
                },
                "logId": {"keyId": B64.encode(self.log_id())}
            }],
            "certificateAuthorities": [],
            "ctlogs": [],
            "timestampAuthorities": []
        })
        .to_string()
    }

    /// Signs `artifact` with the author's key and logs it: the bundle, as JSON.
    pub fn sign_with_key(&self, private_pem: &str, public_pem: &str, artifact: &[u8]) -> Vec<u8> {
        let digest: [u8; 32] = Sha256::digest(artifact).into();
        let signature = signature::sign(private_pem, artifact).expect("signs");
        // The hashedrekord body, canonical JSON (keys sorted, no spaces), as Rekor stores it.
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{{"data":{{"hash":{{"algorithm":"sha256","value":"{}"}}}},"signature":{{"content":"{}","publicKey":{{"content":"{}"}}}}}}}}"#,
            hex::encode(digest),
            signature,
            B64.encode(public_pem.as_bytes()),
        );
        let bundle: Value = json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "publicKey": {"hint": B64.encode(Sha256::digest(der_of(public_pem)))},
                "tlogEntries": [self.log_entry("hashedrekord", &body)]
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(digest)},
                "signature": signature
            }
        });
        serde_json::to_vec(&bundle).expect("JSON")
    }

    /// An in-toto attestation signed with the author's key and logged as a `dsse` 0.0.1 entry,
    /// as `cosign attest-blob --key … --bundle` writes it: the DSSE envelope's payload is
    /// `statement` (an in-toto Statement, JSON), signed over its PAE.
    pub fn attest_with_key(
        &self,
        private_pem: &str,
        public_pem: &str,
        statement: &[u8],
    ) -> Vec<u8> {
        const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
        let mut pae = format!(
            "DSSEv1 {} {PAYLOAD_TYPE} {} ",
            PAYLOAD_TYPE.len(),
            statement.len()
        )
        .into_bytes();
        pae.extend_from_slice(statement);
        let signature = signature::sign(private_pem, &pae).expect("signs");
        let envelope = json!({
            "payload": B64.encode(statement),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": signature, "keyid": ""}]
        });
        let envelope_hash =
            hex::encode(Sha256::digest(serde_json::to_vec(&envelope).expect("JSON")));
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"dsse","spec":{{"envelopeHash":{{"algorithm":"sha256","value":"{envelope_hash}"}},"payloadHash":{{"algorithm":"sha256","value":"{}"}},"signatures":[{{"signature":"{signature}","verifier":"{}"}}]}}}}"#,
            hex::encode(Sha256::digest(statement)),
            B64.encode(public_pem.as_bytes()),
        );
        let bundle: Value = json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "publicKey": {"hint": B64.encode(Sha256::digest(der_of(public_pem)))},
                "tlogEntries": [self.log_entry("dsse", &body)]
            },
            "dsseEnvelope": envelope
        });
        serde_json::to_vec(&bundle).expect("JSON")
    }

    /// Logs `body` (a canonical Rekor entry of `kind` 0.0.1): the tlog entry with its signed
    /// entry timestamp (SET) and an inclusion proof against a signed checkpoint.
    fn log_entry(&self, kind: &str, body: &str) -> Value {
        let log_index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let integrated_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            // Logged a moment ago: never "in the future" for the verifier's clock.
            - 5;
        let body_b64 = B64.encode(body);
        let log_id = self.log_id();
        // The signed entry timestamp: the log's signature over the canonical JSON of the entry.
        let set_payload = format!(
            r#"{{"body":"{body_b64}","integratedTime":{integrated_time},"logID":"{}","logIndex":{log_index}}}"#,
            hex::encode(log_id)
        );
        let set = signature::sign(&self.log_private_pem, set_payload.as_bytes()).expect("SET");
        // A two-leaf tree: some earlier entry, then this one.
        let earlier = leaf_hash(format!("entry {log_index} of {LOG_NAME}").as_bytes());
        let leaf = leaf_hash(body.as_bytes());
        let root = node_hash(&earlier, &leaf);
        let note = format!("{LOG_NAME} - 1\n2\n{}\n", B64.encode(root));
        let note_signature = B64
            .decode(signature::sign(&self.log_private_pem, note.as_bytes()).expect("checkpoint"))
            .expect("base64");
        let mut signed = log_id[..4].to_vec();
        signed.extend_from_slice(&note_signature);
        let checkpoint = format!("{note}\n\u{2014} {LOG_NAME} {}\n", B64.encode(signed));
        json!({
            "logIndex": log_index.to_string(),
            "logId": {"keyId": B64.encode(log_id)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": integrated_time.to_string(),
            "inclusionPromise": {"signedEntryTimestamp": set},
            "inclusionProof": {
                "logIndex": "1",
                "rootHash": B64.encode(root),
                "treeSize": "2",
                "hashes": [B64.encode(earlier)],
                "checkpoint": {"envelope": checkpoint}
            },
            "canonicalizedBody": body_b64
        })
    }
}
