//! The control-plane error type: what failed and on which object.
//!
//! Packet parsing never uses this type; malformed packets are counted by
//! [`crate::DropReason`] instead.

use serde::Serialize;

/// Result alias for control-plane operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A coarse category of an [`Error`], stable across versions so that the
/// control protocol and scripts can branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// An object with that name already exists.
    Exists,
    /// An argument was out of range or malformed.
    InvalidArgument,
    /// A table or queue is at capacity.
    Full,
    /// The operating system refused an operation.
    Io,
    /// The switch is shutting down or its datapath has stopped.
    Unavailable,
    /// A datapath thread did not answer in time.
    Timeout,
    /// A datapath thread failed (it panicked) and no longer runs.
    DatapathFailed,
}

/// What became of a change whose datapath thread did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Nothing changed: the request was withdrawn before any datapath
    /// thread took it (for a read: nothing was read).
    NotApplied,
    /// The change is recorded and live on the threads that answered; the
    /// late thread applies it, in order, when it resumes.
    WillApply,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::NotApplied => "nothing was changed",
            Outcome::WillApply => "the change is recorded and will be applied by that thread when it resumes",
        })
    }
}

/// An error from a control-plane operation on a [`crate::Switch`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No bridge has that name.
    #[error("no bridge named '{0}'")]
    BridgeNotFound(String),
    /// A bridge with that name exists already.
    #[error("bridge '{0}' already exists")]
    BridgeExists(String),
    /// No port has that name.
    #[error("no port named '{0}'")]
    PortNotFound(String),
    /// A port with that name exists already (on this or another bridge).
    #[error("port '{name}' already exists on bridge '{bridge}'")]
    PortExists {
        /// The port's name.
        name: String,
        /// The bridge that holds it.
        bridge: String,
    },
    /// Something else the request names does not exist (a network, a
    /// network namespace, an attachment); the message says what.
    #[error("{0}")]
    NotFound(String),
    /// Something else the request would create exists already (an
    /// attachment, an interface in a container); the message says what.
    #[error("{0}")]
    Exists(String),
    /// An argument was malformed or out of range.
    #[error("invalid {what}: {why}")]
    InvalidArgument {
        /// What was being set.
        what: &'static str,
        /// Why it was refused.
        why: String,
    },
    /// A bounded resource is exhausted.
    #[error("{0} is full")]
    Full(&'static str),
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Io {
        /// The operation that failed.
        call: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No network interface has that name (in the switch's namespace).
    #[error("no network interface named '{name}'")]
    InterfaceNotFound {
        /// The name asked for.
        name: String,
        /// The operating system's error (`ENODEV`).
        #[source]
        source: std::io::Error,
    },
    /// [`Switch::shutdown`](crate::Switch::shutdown) tore down what it
    /// could; these went wrong.
    #[error("shutdown incomplete: {}", problems.join("; "))]
    ShutdownIncomplete {
        /// What went wrong, one entry per problem.
        problems: Vec<String>,
    },
    /// The datapath is gone (the switch is shutting down).
    #[error("the datapath is not running")]
    Unavailable,
    /// A datapath thread did not take or finish a request within the
    /// switch's deadline ([`SwitchBuilder::datapath_timeout`](crate::SwitchBuilder::datapath_timeout)).
    #[error("datapath thread {thread} did not answer within {} ms: {outcome}", waited.as_millis())]
    Timeout {
        /// The thread that did not answer.
        thread: String,
        /// How long the call waited.
        waited: std::time::Duration,
        /// Whether the change was made, will be made, or was not.
        outcome: Outcome,
    },
    /// A datapath thread failed and no longer forwards.
    #[error("datapath thread {thread} has failed ({why})")]
    DatapathFailed {
        /// The thread's name.
        thread: String,
        /// What happened (`panicked: MESSAGE`).
        why: String,
    },
}

impl Error {
    /// The error's category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BridgeNotFound(_)
            | Error::PortNotFound(_)
            | Error::NotFound(_)
            | Error::InterfaceNotFound { .. } => ErrorKind::NotFound,
            Error::BridgeExists(_) | Error::PortExists { .. } | Error::Exists(_) => ErrorKind::Exists,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Full(_) => ErrorKind::Full,
            Error::Io { .. } | Error::ShutdownIncomplete { .. } => ErrorKind::Io,
            Error::Unavailable => ErrorKind::Unavailable,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::DatapathFailed { .. } => ErrorKind::DatapathFailed,
        }
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::InvalidArgument { what, why: why.into() }
    }

    pub(crate) fn no_interface(name: &str) -> Self {
        Error::InterfaceNotFound { name: name.to_string(), source: std::io::Error::from_raw_os_error(libc::ENODEV) }
    }

    pub(crate) fn io(call: &'static str, source: std::io::Error) -> Self {
        Error::Io { call, source }
    }
}
