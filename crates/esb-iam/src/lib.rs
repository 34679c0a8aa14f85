//! Least privilege for functions, as SAM users write it.
//!
//! Every function gets an access key pair of its own ([`store`]), bound to the policy its
//! template gives it ([`sam::function_policy`]: SAM policy templates, AWS managed policy
//! names, inline statements, or the role it names). S3, DynamoDB and the Invoke API look
//! the caller's key up in the box's credentials file and evaluate the policy on every
//! request ([`Policy::evaluate`]): an explicit Deny wins, no Allow is a deny. The box's own
//! key pair is not in the file: it stays with the host user and never enters a worker.

mod policy;
pub mod sam;
pub mod store;

pub use policy::{Decision, Effect, Policy, Statement};
pub use store::{CredentialStore, Principal, Verdict};

/// How denials are handled (`ESB_IAM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied requests are refused with AWS's access-denied error.
    #[default]
    Enforce,
    /// Denied requests pass; each would-be denial is logged.
    Warn,
    /// Function keys are accepted without evaluating their policy.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode, Error> {
        match s.trim() {
            "" | "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            "off" => Ok(Mode::Off),
            other => Err(Error::Setting(format!(
                "ESB_IAM={other:?}: expected enforce, warn or off"
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        })
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error("{0}")]
    Setting(String),
    /// A policy in the template is malformed (the message names the function and item).
    #[error("{0}")]
    Policy(String),
    /// The credentials file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// What a request asks to do: an IAM action (`s3:GetObject`) on resources (ARNs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The action, `service:Operation`.
    pub action: String,
    /// Every resource the request touches (each must be allowed).
    pub resources: Vec<String>,
}

impl Access {
    /// An action on one resource.
    pub fn new(action: impl Into<String>, resource: impl Into<String>) -> Access {
        Access {
            action: action.into(),
            resources: vec![resource.into()],
        }
    }
}

/// The message AWS gives for a denial: `User: ARN is not authorized to perform: ACTION on
/// resource: RESOURCE because no identity-based policy allows the ACTION action` (or
/// `with an explicit deny in an identity-based policy`).
pub fn denial_message(principal_arn: &str, action: &str, resource: &str, explicit: bool) -> String {
    if explicit {
        format!(
            "User: {principal_arn} is not authorized to perform: {action} on resource: {resource} with an explicit deny in an identity-based policy"
        )
    } else {
        format!(
            "User: {principal_arn} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
        )
    }
}
