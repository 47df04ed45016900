//! The crate's one error type.

/// Why a simulation was not run. Messages are one line, printed after the binary's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// A flag's value is out of range, or flags contradict each other.
    #[error("{0}")]
    Argument(String),
}
