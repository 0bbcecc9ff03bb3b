//! Errors of the transfer engine, sorted by what the user should do about them.

use std::time::Duration;

/// What kind of failure ended a transfer; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was wrong (bad arguments, unusable URL).
    Usage,
    /// The server refused (a 4xx other than the retryable ones).
    Refused,
    /// Retries ran out without progress; re-running resumes.
    Exhausted,
    /// The server's copy does not match the local file.
    Verification,
    /// The local file changed while it was being uploaded.
    FileChanged,
    /// Stopped by the user (Ctrl-C); re-running resumes.
    Interrupted,
    /// A local failure (reading the file, writing the state).
    Local,
    /// The server could not be reached before anything was transferred (nothing listens, no
    /// such host, a TLS handshake with a server that speaks plain HTTP).
    Unreachable,
}

impl ErrorKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Local => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Refused => 3,
            ErrorKind::Exhausted => 4,
            ErrorKind::Verification => 5,
            ErrorKind::FileChanged => 6,
            ErrorKind::Unreachable => 7,
            ErrorKind::Interrupted => 130,
        }
    }
}

/// A failed transfer, with a message that says what happened and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    /// The kind.
    pub kind: ErrorKind,
    /// One or two lines for the user.
    pub message: String,
    /// The HTTP status of the answer that ended it, if an answer did.
    pub status: Option<u16>,
}

impl ClientError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
        }
    }

    /// The same error, saying which HTTP status caused it.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// A local I/O failure.
    pub fn local(what: &str, e: std::io::Error) -> Self {
        Self::new(ErrorKind::Local, format!("{what}: {}", io_reason(&e)))
    }
}

/// An I/O error in words, without the `(os error N)` that the standard library appends.
pub fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        // "No such file or directory" reads as part of a sentence after a name.
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The outcome of one attempt (one request): retry it, or stop.
#[derive(Debug)]
pub enum AttemptError {
    /// Worth retrying after a delay (network error, timeout, stall, 5xx, 423, 429, 409, 460).
    Retry {
        /// Why, for logs and the final message.
        why: String,
        /// The server's Retry-After, if any.
        retry_after: Option<Duration>,
        /// An HTTP answer came (the server is there: the transfer has begun).
        answered: bool,
    },
    /// The server refused a request body this large (413): send smaller chunks.
    TooLarge {
        /// The body size that was refused.
        size: u64,
    },
    /// The upload is gone on the server (404/410).
    Gone,
    /// The server could not be reached in a way that no wait fixes while nothing has been
    /// transferred (a wrong port, host or scheme): fatal then; once the transfer has begun, a
    /// server restarting looks the same, and it is retried.
    Unreachable(String),
    /// Not worth retrying.
    Fatal(ClientError),
}

impl AttemptError {
    /// What went wrong, in a few words.
    pub fn message(&self) -> String {
        match self {
            AttemptError::Retry { why, .. } => why.clone(),
            AttemptError::TooLarge { size } => format!(
                "a body of {} was too large",
                crate::progress::human_bytes(*size)
            ),
            AttemptError::Gone => "gone from the server".into(),
            AttemptError::Unreachable(why) => why.clone(),
            AttemptError::Fatal(e) => e.message.clone(),
        }
    }

    /// A retryable failure.
    pub fn retry(why: impl Into<String>) -> Self {
        AttemptError::Retry {
            why: why.into(),
            retry_after: None,
            answered: false,
        }
    }
}

impl From<ClientError> for AttemptError {
    fn from(e: ClientError) -> Self {
        AttemptError::Fatal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_in_words() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&e), "no such file or directory");
        let e = std::io::Error::from_raw_os_error(13);
        assert_eq!(io_reason(&e), "permission denied");
        let e = std::io::Error::other("Disk on fire");
        assert_eq!(io_reason(&e), "disk on fire");
        assert_eq!(
            ClientError::local("a.bin", std::io::Error::from_raw_os_error(21)).message,
            "a.bin: is a directory"
        );
    }
}
