//! How a process of this binary ends. A child that cannot run with what the
//! supervisor gave it exits with `EX_CONFIG` (78): respawning it would fail
//! the same way, so the supervisor drains the tree and exits 1 instead, and
//! systemd's restart policy (or the operator) takes over.

use std::process::ExitCode;

/// Why a child cannot start with what it was given. Restarting it cannot fix
/// any of these; the process exits with [`EX_CONFIG`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line was not understood (a supervisor and an executable
    /// of different versions, after an upgrade in place).
    #[error("invalid arguments from the supervisor:\n{0}")]
    Arguments(#[source] clap::Error),
    /// The `--settings` argument is not this role's settings (a supervisor
    /// and an executable of different versions, after an upgrade in place).
    #[error("the {role} settings passed by the supervisor cannot be read")]
    Settings {
        /// The role that could not read them.
        role: &'static str,
        /// What JSON decoding said.
        #[source]
        source: serde_json::Error,
    },
    /// The presets in the settings do not form a valid set.
    #[error("invalid presets")]
    Presets(#[source] pixpool_imaging::ImagingError),
    /// The fd named by `--listen-fd` is not an inherited socket.
    #[error("--listen-fd {0} is not an inherited socket (a {1} is started by `pixpool serve`)")]
    ListenFd(i32, &'static str),
    /// The tokens the supervisor passed are not a JSON list of strings.
    #[error("the API tokens passed by the supervisor are not a JSON list")]
    Tokens(#[source] serde_json::Error),
    /// The uploads directory (or a directory of its layout) cannot be opened.
    #[error("could not open the uploads directory")]
    Uploads(#[source] pixpool_store::StoreError),
    /// The webhook signing secret the supervisor passed is missing or malformed.
    #[error("the webhook signing secret passed by the supervisor is unusable")]
    WebhookSecret(#[source] pixpool_webhook::SecretError),
    /// The configuration (file, environment, flags) is invalid: the server does not
    /// start.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// sysexits' `EX_CONFIG`: the supervisor's [`pixpool_supervisor::child::FATAL_EXIT_CODE`].
pub const EX_CONFIG: u8 = 78;

// One number, two crates: the child's exit and the supervisor's test of it.
const _: () = assert!(EX_CONFIG as i32 == pixpool_supervisor::child::FATAL_EXIT_CODE);

/// The exit code for a run that failed with `err`: [`EX_CONFIG`] when a
/// [`ConfigError`] is anywhere in its chain, else 1.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(EX_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

/// Whether `argv` runs one of the roles the supervisor starts (whose argument
/// errors are configuration errors, not a user's typo at a terminal).
pub fn is_child_role(arg1: Option<&std::ffi::OsStr>) -> bool {
    arg1.and_then(|a| a.to_str())
        .is_some_and(|a| matches!(a, "front" | "worker" | "admin" | "courier" | "sweeper"))
}
