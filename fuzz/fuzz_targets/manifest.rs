//! `spell.toml`: any text parses into a valid manifest or is refused as `manifest_invalid`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spellhost::supply_chain::Manifest;
use spellhost::supply_chain::manifest::is_valid_name;

fuzz_target!(|text: &str| {
    match Manifest::parse(text) {
        Ok(manifest) => {
            assert!(is_valid_name(&manifest.name), "{:?}", manifest.name);
            let limits = &manifest.limits;
            for limit in [
                limits.fuel_max,
                limits.wall_ms_max,
                limits.memory_bytes_max,
                limits.output_bytes_max,
            ] {
                assert_ne!(limit, Some(0), "limits are positive");
            }
        }
        Err(error) => assert_eq!(error.code(), "manifest_invalid", "{error}"),
    }
});
