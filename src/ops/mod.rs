//! What an operator needs beyond the API: readiness, the periodic self-check, online backup
//! and restore of the embedded database, and private data-directory permissions.

pub mod backup;
pub mod files;
pub mod readiness;
pub mod selfcheck;

pub use readiness::Readiness;
