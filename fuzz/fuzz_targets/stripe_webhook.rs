//! The Stripe webhook: signature verification over the raw body, then event parsing.
//!
//! Input: a mode byte, then the rest. Mode bit 0 set: the rest is a body, signed here with the
//! configured secret (as Stripe would sign it), so that the event parsers are reached; the
//! delivery must then verify (or be refused only as a bad body). Bit 0 clear: the rest is
//! `header\nbody` as an attacker sends it; it must never verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spellhost::billing::{SignatureError, verify_signature};
use stripe_webhook::Webhook;

const SECRET: &str = "whsec_fuzz_secret_fuzz_secret_fuzz";

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let Ok(body) = std::str::from_utf8(rest) else {
            return;
        };
        let header = Webhook::generate_test_header(body, SECRET, None);
        match verify_signature(rest, Some(&header), [SECRET].into_iter()) {
            // Verified: the payload comes back as it was signed.
            Ok(payload) => assert_eq!(payload, body),
            Err(SignatureError::Body) => {}
            Err(error) => panic!("a correctly signed delivery was refused: {error}"),
        }
    } else {
        let (header, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        let header = String::from_utf8_lossy(header);
        let verified = verify_signature(body, Some(&header), [SECRET].into_iter());
        assert!(
            verified.is_err(),
            "a delivery the fuzzer signed without the secret verified"
        );
    }
});
