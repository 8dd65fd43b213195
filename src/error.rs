//! The crate's one error type.
//!
//! Every fallible function returns [`Result<T>`]. Messages read "doing what: cause", lowercase, with
//! no trailing period; only `main` adds the `error:` prefix and a `try:` hint. Clients of the HTTP
//! listeners never see these messages: they get a fixed public text per status while the log gets
//! the cause.

use std::fmt;
use std::path::PathBuf;

/// Shorthand for results that fail with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in stripe-inbox.
#[derive(Debug)]
pub enum Error {
    /// The command line could not be understood. `hint` is printed as `try: ...` by `main`.
    Usage { msg: String, hint: String },
    /// The configuration file is missing, not TOML, has an unknown key or an invalid value.
    Config { path: PathBuf, msg: String },
    /// A file or socket operation failed; `what` says which, with the path or address.
    Io { what: String, err: std::io::Error },
    /// SQLite refused a statement; `what` says which operation.
    Sqlite { what: String, err: rusqlite::Error },
    /// The read pool could not hand out a connection.
    Pool(r2d2::Error),
    /// The database was written by a newer build of stripe-inbox.
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// Another `stripe-inbox serve` already holds the database.
    Locked { path: PathBuf, holder: String },
    /// A command declined to do something that could lose data or race a running server (restore
    /// over an existing database without `--force`, prune while `serve` runs, ...); `hint` says
    /// how to go on. Nothing was changed.
    Refused { msg: String, hint: String },
    /// The writer's queue is full: nothing was done, and trying again in a moment may succeed.
    Busy,
    /// The writer thread is gone, or the transaction holding this work failed to begin or commit;
    /// nothing of it stayed. Says which.
    Unavailable(String),
    /// A command needs the database file and there is none at `path`.
    NoDatabase { path: PathBuf },
    /// What was asked for does not exist; `what` says so in full (`event evt_...: no such event`).
    NotFound { what: String },
    /// An event's body was emptied by retention, so it cannot be re-applied.
    Pruned { event_id: String },
    /// A database (the live one, a backup or a copy) failed a check; `msg` says which and how.
    Damaged { path: PathBuf, msg: String },
    /// Something kept a resource busy for longer than we wait; `what` says what and how long.
    Timeout { what: String },
    /// The operating system's random source or the password hash failed.
    Crypto(String),
    /// An outgoing HTTP request failed or was answered with an error status.
    Http { what: String, msg: String },
    /// A value could not be encoded as (or decoded from) JSON.
    Json {
        what: String,
        err: serde_json::Error,
    },
    /// `check` found problems; each is one line.
    Problems(Vec<String>),
    /// Stripe's API answered a request with an error, or gave no answer through every retry
    /// (`status` is `None`). Carries what Stripe said; never the API key.
    Stripe(Box<StripeError>),
}

/// What a failed call to Stripe's API said (see [`Error::Stripe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeError {
    /// Method and path, without the query: `GET /v1/customers/cus_123`.
    pub request: String,
    /// The HTTP status of the last answer; `None` when no answer came (connection, timeout).
    pub status: Option<u16>,
    /// `error.type`: `invalid_request_error`, `api_error`, `idempotency_error`, `card_error`.
    pub error_type: Option<String>,
    /// `error.code`: `resource_missing`, `lock_timeout`, `idempotency_key_in_use`, ...
    pub code: Option<String>,
    /// `error.message`, or what went wrong without an answer.
    pub message: String,
    /// Stripe's `Request-Id` header, for Stripe's support.
    pub request_id: Option<String>,
    /// How many times the request was sent.
    pub attempts: u32,
}

impl StripeError {
    /// The answer was `status` with error code `code`.
    pub fn is(&self, status: u16, code: &str) -> bool {
        self.status == Some(status) && self.code.as_deref() == Some(code)
    }
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => {
                write!(f, "{}: stripe answered {status}", self.request)?;
                let kind: Vec<&str> = [&self.error_type, &self.code]
                    .into_iter()
                    .filter_map(|v| v.as_deref())
                    .collect();
                if !kind.is_empty() {
                    write!(f, " {}", kind.join("/"))?;
                }
                write!(f, ": {}", self.message)?;
            }
            None => write!(
                f,
                "{}: no answer from stripe: {}",
                self.request, self.message
            )?,
        }
        let mut notes = Vec::new();
        if let Some(id) = &self.request_id {
            notes.push(format!("request {id}"));
        }
        if self.attempts > 1 {
            notes.push(format!("{} attempts", self.attempts));
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

impl Error {
    /// A usage error with a hint; `main` exits 2 for these.
    pub fn usage(msg: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Usage {
            msg: msg.into(),
            hint: hint.into(),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, err: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            err,
        }
    }

    /// Wraps a SQLite error with what was being done.
    pub fn sqlite(what: impl Into<String>, err: rusqlite::Error) -> Error {
        Error::Sqlite {
            what: what.into(),
            err,
        }
    }

    /// A refusal with a hint; `main` exits 1 for these.
    pub fn refused(msg: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Refused {
            msg: msg.into(),
            hint: hint.into(),
        }
    }

    /// The process exit code for this error: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage { .. } => 2,
            _ => 1,
        }
    }

    /// The `try: ...` hint `main` prints under the message, if any.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Usage { hint, .. } if !hint.is_empty() => Some(hint),
            Error::Refused { hint, .. } if !hint.is_empty() => Some(hint),
            Error::SchemaTooNew { .. } => {
                Some("run the newer stripe-inbox build that wrote this database")
            }
            Error::Locked { .. } => {
                Some("stop the running `stripe-inbox serve` first (systemctl stop stripe-inbox)")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage { msg, .. } => write!(f, "{msg}"),
            Error::Config { path, msg } => write!(f, "config {}: {msg}", path.display()),
            Error::Io { what, err } => write!(f, "{what}: {err}"),
            Error::Sqlite { what, err } => write!(f, "{what}: {err}"),
            Error::Pool(err) => write!(f, "read pool: {err}"),
            Error::SchemaTooNew { path, found, known } => write!(
                f,
                "database {}: schema version {found} is newer than this build knows ({known})",
                path.display()
            ),
            Error::Locked { path, holder } => {
                write!(f, "database {}: already served by {holder}", path.display())
            }
            Error::Refused { msg, .. } => write!(f, "{msg}"),
            Error::Busy => write!(f, "writer busy: queue full"),
            Error::Unavailable(msg) => write!(f, "writer unavailable: {msg}"),
            Error::NoDatabase { path } => write!(f, "database {}: no such file", path.display()),
            Error::NotFound { what } => write!(f, "{what}"),
            Error::Pruned { event_id } => {
                write!(f, "event {event_id}: its body was pruned by retention")
            }
            Error::Damaged { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Timeout { what } => write!(f, "{what}"),
            Error::Crypto(msg) => write!(f, "{msg}"),
            Error::Http { what, msg } => write!(f, "{what}: {msg}"),
            Error::Json { what, err } => write!(f, "{what}: {err}"),
            Error::Stripe(e) => write!(f, "{e}"),
            Error::Problems(problems) => write!(
                f,
                "check found {} problem(s): {}",
                problems.len(),
                problems.join("; ")
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { err, .. } => Some(err),
            Error::Sqlite { err, .. } => Some(err),
            Error::Pool(err) => Some(err),
            Error::Json { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<r2d2::Error> for Error {
    fn from(err: r2d2::Error) -> Error {
        Error::Pool(err)
    }
}
