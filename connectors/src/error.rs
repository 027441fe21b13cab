//! Connector errors: a kind that decides the retry policy, and a message
//! that says what happened, where, and how to fix it.

/// What the runtime should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Likely to pass on its own (connection lost, lock timeout, broker
    /// unavailable): retry with backoff.
    Transient,
    /// Will fail again until someone changes something (missing privilege,
    /// wrong `wal_level`, incompatible table): report the fix, no quick
    /// retries.
    Definite,
    /// One record cannot be processed (undecodable, violates the column):
    /// send it to the dead-letter topic and go on.
    BadRecord,
}

/// An error raised by a source or sink.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    /// What the runtime should do.
    pub kind: ErrorKind,
    /// What happened, where, and how to fix it. Never contains row values
    /// or credentials.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectorError {
    /// A transient error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// A definite error.
    pub fn definite(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Definite, message)
    }

    /// One bad record.
    pub fn bad_record(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRecord, message)
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// True if retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}
