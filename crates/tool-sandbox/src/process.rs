//! TEMPORARY STUB (replaced by the sandbox module).
#![allow(missing_docs)]
use std::path::{Path, PathBuf};
use std::time::Duration;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    pub wall_clock: Duration,
    pub output_bytes: usize,
}
impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            wall_clock: Duration::from_secs(10),
            output_bytes: 1 << 20,
        }
    }
}
#[derive(Debug)]
pub struct SandboxedCommand {
    pub program: PathBuf,
    pub network: bool,
    pub limits: ProcessLimits,
}
impl SandboxedCommand {
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            network: false,
            limits: ProcessLimits::default(),
        }
    }
    #[must_use]
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }
    #[must_use]
    pub fn limits(mut self, l: ProcessLimits) -> Self {
        self.limits = l;
        self
    }
}
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("stub")]
    Stub,
}
