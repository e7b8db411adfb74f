//! One error type for the library. Every message says what went wrong *and* what to do;
//! the variant decides the process exit code (2 = bad input or usage, 1 = runtime failure).
//!
//! An error keeps the error it came from ([`std::error::Error::source`]), so a caller can
//! still ask what the underlying failure was (e.g. a closed pipe, which the binary treats as
//! a normal end). `Display` prints the whole chain, `message: cause: cause`.

use std::fmt::{self, Display};

/// The underlying failure an [`Error`] was raised from.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug)]
pub enum Error {
    /// The user's input or arguments are wrong: exit code 2.
    Input {
        message: String,
        source: Option<Source>,
    },
    /// Something failed while running (I/O, a backend, a server): exit code 1.
    Runtime {
        message: String,
        source: Option<Source>,
    },
}

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input {
            message: msg.into(),
            source: None,
        }
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime {
            message: msg.into(),
            source: None,
        }
    }
    /// Process exit code for this error: 2 for input/usage errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input { .. } => 2,
            Error::Runtime { .. } => 1,
        }
    }
    /// The message of this error alone, without its causes.
    pub fn message(&self) -> &str {
        match self {
            Error::Input { message, .. } | Error::Runtime { message, .. } => message,
        }
    }
    pub fn is_input(&self) -> bool {
        matches!(self, Error::Input { .. })
    }
    /// Whether this error, or any error it came from, is a write to a closed pipe (e.g. the
    /// reader of `longtail classify ... | head -1` exited): not a failure of longtail's.
    pub fn is_broken_pipe(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return true;
            }
            next = e.source();
        }
        false
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())?;
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Input { source, .. } | Error::Runtime { source, .. } => source
                .as_deref()
                .map(|s| s as &(dyn std::error::Error + 'static)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach context to foreign errors, choosing whether the failure is the input's fault. The
/// foreign error is kept as the source.
pub trait Context<T> {
    /// The failure is caused by the user's input (exit 2).
    fn input_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
    /// The failure is a runtime failure (exit 1).
    fn runtime_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Source>> Context<T> for std::result::Result<T, E> {
    fn input_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Input {
            message: context().to_string(),
            source: Some(e.into()),
        })
    }
    fn runtime_ctx<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Runtime {
            message: context().to_string(),
            source: Some(e.into()),
        })
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Runtime {
            message: "I/O error".into(),
            source: Some(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prints_the_chain_and_the_source_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed");
        let e = Err::<(), _>(io)
            .runtime_ctx(|| "writing scores")
            .unwrap_err();
        assert_eq!(e.to_string(), "writing scores: pipe closed");
        assert_eq!(e.message(), "writing scores");
        assert!(e.is_broken_pipe());
        assert_eq!(e.exit_code(), 1);
        let e = Err::<(), _>("bad value").input_ctx(|| "--x").unwrap_err();
        assert_eq!(
            (e.to_string().as_str(), e.exit_code()),
            ("--x: bad value", 2)
        );
        assert!(!e.is_broken_pipe());
    }
}
