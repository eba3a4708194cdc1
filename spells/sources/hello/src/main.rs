//! hello spell: `{"name":"Ada"}` on stdin -> `{"greeting":"Hello, Ada!"}` on stdout.
//! Missing or invalid name: message on stderr, exit code 2.

use std::io::{Read, Write};
use std::process::exit;

use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct Output {
    greeting: String,
}

fn fail(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "hello: {msg}");
    exit(2)
}

fn main() {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        fail("could not read stdin");
    }
    let value: Value = match serde_json::from_slice(&input) {
        Ok(v) => v,
        Err(e) => fail(&format!("input is not valid JSON: {e}")),
    };
    let name = match value.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        Some(Value::String(_)) => fail("\"name\" must not be empty"),
        Some(_) => fail("\"name\" must be a string"),
        None => fail("missing \"name\" (expected {\"name\":\"...\"})"),
    };
    let out = Output {
        greeting: format!("Hello, {name}!"),
    };
    let bytes = match serde_json::to_vec(&out) {
        Ok(b) => b,
        Err(e) => fail(&format!("could not encode output: {e}")),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        fail("could not write stdout");
    }
}
