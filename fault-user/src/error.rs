//! What a command can fail with, and the exit code each failure maps to: 2 when the policy
//! (or the command line) is wrong, 1 when the host or the kernel refused, 3 when an
//! experiment's stop condition ended it.

use std::path::PathBuf;

use crate::{policy::PolicyError, target::TargetError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file does not parse or validate.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// `fault check` found problems in some of its files, one line each.
    #[error("{}", lines.join("\n"))]
    Check { lines: Vec<String> },
    /// A target does not resolve (the policy names what is not there), or the host lacks
    /// what resolving needs.
    #[error("{}: {source}", file.display())]
    Target {
        file: PathBuf,
        #[source]
        source: TargetError,
    },
    /// The policy is valid but cannot be applied to these targets, for `reason`.
    #[error("{}: {reason}", file.display())]
    Refused { file: PathBuf, reason: String },
    /// The command line asks for something that cannot be.
    #[error("{0}")]
    Usage(String),
    /// A stop condition of the experiment was met: everything was reverted.
    #[error("{name} aborted: {why}")]
    Aborted { name: String, why: String },
    /// A detached loader ended before every fault was in place, with its exit code.
    #[error("{why} (the loader's log: {})", log.display())]
    Detached { code: u8, why: String, log: PathBuf },
    /// A run's event log does not parse (`fault report`): `message` names the line.
    #[error("{}: {message}", file.display())]
    BadLog { file: PathBuf, message: String },
    /// The host or the kernel refused a step.
    #[error("{step}: {source:#}")]
    Failed {
        step: String,
        #[source]
        source: anyhow::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Policy(_)
            | Error::Check { .. }
            | Error::Refused { .. }
            | Error::Usage(_)
            | Error::BadLog { .. } => 2,
            Error::Target { source, .. } if !source.host => 2,
            Error::Target { .. } | Error::Failed { .. } => 1,
            Error::Aborted { .. } => 3,
            Error::Detached { code, .. } => *code,
        }
    }
}

/// `map_err(failed("load the eBPF object"))`: a step the host refused.
pub fn failed<E: Into<anyhow::Error>>(step: impl Into<String>) -> impl FnOnce(E) -> Error {
    let step = step.into();
    move |e| Error::Failed {
        step,
        source: e.into(),
    }
}

/// Problems collected while taking faults off, as one error.
pub fn incomplete(what: &str, problems: Vec<String>) -> Result<(), Error> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Failed {
        step: format!("{what} was incomplete"),
        source: anyhow::anyhow!("\n  {}", problems.join("\n  ")),
    })
}
