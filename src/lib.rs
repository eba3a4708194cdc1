//! spellhost: runs signed WebAssembly spells on demand and bills them by the instruction.
//!
//! See `docs/ARCHITECTURE.md` for the map and a walk through one cast.

pub mod sandbox;
pub mod supply_chain;
