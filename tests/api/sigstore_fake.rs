//! A private Sigstore instance for tests: a Rekor (v1) transparency log with its own P-256 key,
//! a Fulcio CA (a self-signed P-256 root) with a certificate-transparency log, and the
//! `trusted_root.json` that names them. It writes bundles exactly as cosign does against a real
//! instance: `cosign sign-blob --key … --bundle` (a `hashedrekord` 0.0.1 entry over the
//! artifact's digest, its signed entry timestamp (SET), and an inclusion proof against a signed
//! checkpoint), `cosign attest-blob` (a DSSE envelope, a `dsse` 0.0.1 entry), and keyless
//! `cosign sign-blob` (a short-lived leaf certificate for an OIDC identity and issuer, with an
//! embedded SCT from the CT log). Nothing is faked on the verifying side: the bundles go
//! through the same `sigstore-verify` checks as the public-good instance's.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use spellhost::supply_chain::signature;
use x509_cert::der::asn1::{
    BitString, Ia5String, ObjectIdentifier, OctetString, UtcTime, Utf8StringRef,
};
use x509_cert::der::{Decode as _, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const ID_CE_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_CE_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_KP_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");

/// The log's origin line and signer name in its checkpoints.
const LOG_NAME: &str = "rekor.spellhost.test";

pub struct FakeSigstore {
    log_private_pem: String,
    log_public_der: Vec<u8>,
    /// The Fulcio CA: its key and its self-signed certificate (DER).
    ca_private_pem: String,
    ca_cert_der: Vec<u8>,
    ca_public_der: Vec<u8>,
    /// The certificate-transparency log that issues the leaves' SCTs.
    ct_private_pem: String,
    ct_public_der: Vec<u8>,
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn ca_name() -> Name {
    "CN=fulcio.spellhost.test,O=spellhost test"
        .parse()
        .expect("name")
}

fn utc(seconds: i64) -> Time {
    Time::UtcTime(
        UtcTime::from_unix_duration(std::time::Duration::from_secs(seconds as u64)).expect("time"),
    )
}

fn ecdsa_with_sha256() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        parameters: None,
    }
}

fn extension(oid: ObjectIdentifier, critical: bool, value: &impl Encode) -> Extension {
    Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der().expect("extension DER")).expect("octets"),
    }
}

fn tbs(
    serial: u64,
    issuer: &Name,
    subject: &Name,
    (not_before, not_after): (i64, i64),
    public_der: &[u8],
    extensions: Vec<Extension>,
) -> TbsCertificate {
    TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(serial),
        signature: ecdsa_with_sha256(),
        issuer: issuer.clone(),
        validity: Validity {
            not_before: utc(not_before),
            not_after: utc(not_after),
        },
        subject: subject.clone(),
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(public_der).expect("SPKI"),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    }
}

/// The certificate: `tbs` signed (ECDSA P-256, SHA-256) with `issuer_private_pem`, as DER.
fn signed_certificate(tbs: TbsCertificate, issuer_private_pem: &str) -> Vec<u8> {
    let signed = B64
        .decode(
            signature::sign(issuer_private_pem, &tbs.to_der().expect("TBS DER")).expect("signs"),
        )
        .expect("base64");
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ecdsa_with_sha256(),
        signature: BitString::from_bytes(&signed).expect("bit string"),
    }
    .to_der()
    .expect("certificate DER")
}

/// A managed key's verification material: the hint (SHA-256 of its DER).
fn key_material(public_pem: &str) -> Value {
    json!({"publicKey": {"hint": B64.encode(Sha256::digest(der_of(public_pem)))}})
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
        let (ca_private_pem, ca_public_pem) = signature::generate_key_pair().expect("CA key");
        let (ct_private_pem, ct_public_pem) = signature::generate_key_pair().expect("CT key");
        let ca_public_der = der_of(&ca_public_pem);
        let ca_name = ca_name();
        let now = unix_now();
        let ca_tbs = tbs(
            1,
            &ca_name,
            &ca_name,
            (now - 3600, now + 365 * 86_400),
            &ca_public_der,
            vec![
                extension(
                    ID_CE_BASIC_CONSTRAINTS,
                    true,
                    &BasicConstraints {
                        ca: true,
                        path_len_constraint: None,
                    },
                ),
                extension(
                    ID_CE_KEY_USAGE,
                    true,
                    &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
                ),
            ],
        );
        let ca_cert_der = signed_certificate(ca_tbs, &ca_private_pem);
        FakeSigstore {
            log_public_der: der_of(&log_public_pem),
            log_private_pem,
            ca_private_pem,
            ca_cert_der,
            ca_public_der,
            ct_private_pem,
            ct_public_der: der_of(&ct_public_pem),
            next_index: AtomicU64::new(1),
        }
    }

    /// A Fulcio leaf certificate for `identity` (a URI SAN) and OIDC `issuer`, valid ten
    /// minutes around now, for the key `public_pem`, with an SCT from this instance's CT log
    /// embedded as Fulcio embeds it (over the precertificate: the same TBS without the SCT
    /// extension, and the issuer's key hash).
    pub fn leaf_certificate(&self, identity: &str, issuer: &str, public_pem: &str) -> Vec<u8> {
        let now = unix_now();
        let serial = self.next_index.fetch_add(1, Ordering::Relaxed) + 1000;
        let san = SubjectAltName(vec![GeneralName::UniformResourceIdentifier(
            Ia5String::new(identity).expect("IA5 identity"),
        )]);
        let extensions = vec![
            extension(
                ID_CE_KEY_USAGE,
                true,
                &KeyUsage(KeyUsages::DigitalSignature.into()),
            ),
            extension(
                ID_CE_EXT_KEY_USAGE,
                false,
                &ExtendedKeyUsage(vec![ID_KP_CODE_SIGNING]),
            ),
            extension(ID_CE_SUBJECT_ALT_NAME, true, &san),
            extension(
                ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8"),
                false,
                &Utf8StringRef::new(issuer).expect("UTF-8 issuer"),
            ),
        ];
        let window = (now - 300, now + 300);
        let precert = tbs(
            serial,
            &ca_name(),
            &Name::default(),
            window,
            &der_of(public_pem),
            extensions.clone(),
        );
        let precert_der = precert.to_der().expect("TBS DER");
        // RFC 6962 §3.2: the digitally-signed struct of a precert entry.
        let timestamp_ms = (now - 60) as u64 * 1000;
        let mut signed = vec![0u8, 0u8];
        signed.extend_from_slice(&timestamp_ms.to_be_bytes());
        signed.extend_from_slice(&1u16.to_be_bytes());
        signed.extend_from_slice(&Sha256::digest(&self.ca_public_der));
        signed.extend_from_slice(&(precert_der.len() as u32).to_be_bytes()[1..]);
        signed.extend_from_slice(&precert_der);
        signed.extend_from_slice(&0u16.to_be_bytes());
        let sct_signature = B64
            .decode(signature::sign(&self.ct_private_pem, &signed).expect("SCT"))
            .expect("base64");
        // The SCT (v1, log id, timestamp, no extensions, SHA-256/ECDSA) in a TLS list.
        let mut sct = vec![0u8];
        sct.extend_from_slice(&Sha256::digest(&self.ct_public_der));
        sct.extend_from_slice(&timestamp_ms.to_be_bytes());
        sct.extend_from_slice(&0u16.to_be_bytes());
        sct.extend_from_slice(&[4, 3]);
        sct.extend_from_slice(&(sct_signature.len() as u16).to_be_bytes());
        sct.extend_from_slice(&sct_signature);
        let mut list = ((sct.len() + 2) as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&(sct.len() as u16).to_be_bytes());
        list.extend_from_slice(&sct);
        let mut with_sct = extensions;
        with_sct.push(extension(
            ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2"),
            false,
            &OctetString::new(list).expect("SCT list"),
        ));
        let leaf = tbs(
            serial,
            &ca_name(),
            &Name::default(),
            window,
            &der_of(public_pem),
            with_sct,
        );
        signed_certificate(leaf, &self.ca_private_pem)
    }

    /// The log's id: SHA-256 of its DER public key (as Rekor and the trusted root name it).
    fn log_id(&self) -> [u8; 32] {
        Sha256::digest(&self.log_public_der).into()
    }

    /// `trusted_root.json` for this instance: its log, its Fulcio CA and its CT log.
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
            "certificateAuthorities": [{
                "subject": {"organization": "spellhost test", "commonName": "fulcio.spellhost.test"},
                "uri": "https://fulcio.spellhost.test",
                "certChain": {"certificates": [{"rawBytes": B64.encode(&self.ca_cert_der)}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            }],
            "ctlogs": [{
                "baseUrl": "https://ctfe.spellhost.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(&self.ct_public_der),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"}
                },
                "logId": {"keyId": B64.encode(Sha256::digest(&self.ct_public_der))}
            }],
            "timestampAuthorities": []
        })
        .to_string()
    }

    /// Signs `artifact` with the author's key and logs it: the bundle, as JSON.
    pub fn sign_with_key(&self, private_pem: &str, public_pem: &str, artifact: &[u8]) -> Vec<u8> {
        self.message_bundle(key_material(public_pem), private_pem, public_pem, artifact)
    }

    /// Signs `artifact` keyless, as the workflow `identity` of `issuer` would with `cosign
    /// sign-blob --bundle`: an ephemeral key, its Fulcio certificate, and a hashedrekord entry
    /// naming that certificate.
    pub fn sign_keyless(&self, identity: &str, issuer: &str, artifact: &[u8]) -> Vec<u8> {
        let (private_pem, material, certificate_pem) = self.ephemeral(identity, issuer);
        self.message_bundle(material, &private_pem, &certificate_pem, artifact)
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
        self.dsse_bundle(key_material(public_pem), private_pem, public_pem, statement)
    }

    /// The same attestation signed keyless, by `identity` of `issuer`.
    pub fn attest_keyless(&self, identity: &str, issuer: &str, statement: &[u8]) -> Vec<u8> {
        let (private_pem, material, certificate_pem) = self.ephemeral(identity, issuer);
        self.dsse_bundle(material, &private_pem, &certificate_pem, statement)
    }

    /// An ephemeral key and its Fulcio certificate: (private PEM, the bundle's verification
    /// material, the certificate PEM that Rekor entries name).
    fn ephemeral(&self, identity: &str, issuer: &str) -> (String, Value, String) {
        let (private_pem, public_pem) = signature::generate_key_pair().expect("ephemeral key");
        let certificate = self.leaf_certificate(identity, issuer, &public_pem);
        let certificate_pem = pem::encode(&pem::Pem::new("CERTIFICATE", certificate.clone()));
        let material = json!({"certificate": {"rawBytes": B64.encode(&certificate)}});
        (private_pem, material, certificate_pem)
    }

    /// A `messageSignature` bundle over `artifact`, logged as a hashedrekord 0.0.1 entry whose
    /// verifier is `verifier_pem` (a public key or a certificate).
    fn message_bundle(
        &self,
        mut material: Value,
        private_pem: &str,
        verifier_pem: &str,
        artifact: &[u8],
    ) -> Vec<u8> {
        let digest: [u8; 32] = Sha256::digest(artifact).into();
        let signature = signature::sign(private_pem, artifact).expect("signs");
        // The hashedrekord body, canonical JSON (keys sorted, no spaces), as Rekor stores it.
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{{"data":{{"hash":{{"algorithm":"sha256","value":"{}"}}}},"signature":{{"content":"{}","publicKey":{{"content":"{}"}}}}}}}}"#,
            hex::encode(digest),
            signature,
            B64.encode(verifier_pem.as_bytes()),
        );
        material["tlogEntries"] = json!([self.log_entry("hashedrekord", &body)]);
        let bundle = json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": material,
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(digest)},
                "signature": signature
            }
        });
        serde_json::to_vec(&bundle).expect("JSON")
    }

    /// A `dsseEnvelope` bundle whose payload is `statement`, signed over its PAE and logged as
    /// a dsse 0.0.1 entry whose verifier is `verifier_pem`.
    fn dsse_bundle(
        &self,
        mut material: Value,
        private_pem: &str,
        verifier_pem: &str,
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
            B64.encode(verifier_pem.as_bytes()),
        );
        material["tlogEntries"] = json!([self.log_entry("dsse", &body)]);
        let bundle = json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": material,
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
