//! One test binary for all black-box tests (one link step instead of one per file).

mod gate;
mod helpers;
mod sandbox;
