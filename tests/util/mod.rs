//! Shared test helpers.

pub mod origin;
pub mod temp_dir;
