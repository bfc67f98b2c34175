//! The `memory` backend: keeps nothing. State lives in the registry only, as before there
//! was a store; a restart starts empty. For tests and throwaway runs.

use super::{Backend, Batch, Loaded, StoreError};

/// Accepts every batch and forgets it.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryBackend;

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> Option<String> {
        None
    }

    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }

    fn apply(&mut self, _batch: &Batch) -> Result<(), StoreError> {
        Ok(())
    }
}
