//! One error type for the library. Every message says what went wrong *and* what to do;
//! the variant decides the process exit code (2 = bad input or usage, 1 = runtime failure).

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input or arguments are wrong: exit code 2.
    #[error("{0}")]
    Input(String),
    /// Something failed while running (I/O, a backend, a server): exit code 1.
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime(msg.into())
    }
    /// Process exit code for this error: 2 for input/usage errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => 2,
            Error::Runtime(_) => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach context to foreign errors, choosing whether the failure is the input's fault.
pub trait Context<T> {
    /// The failure is caused by the user's input (exit 2).
    fn input_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
    /// The failure is a runtime failure (exit 1).
    fn runtime_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn input_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Input(format!("{}: {e}", context())))
    }
    fn runtime_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Runtime(format!("{}: {e}", context())))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Runtime(format!("I/O error: {e}"))
    }
}
