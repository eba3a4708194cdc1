//! Arbitrary bytes as a module, through the gate and (if accepted) the sandbox.
//! Input: a length byte for the spell's stdin, the input, then the module.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&input_len, rest)) = data.split_first() else {
        return;
    };
    let input_len = usize::from(input_len).min(rest.len());
    let (input, module) = rest.split_at(input_len);
    spellhost_fuzz::gate_and_run(module, input);
});
