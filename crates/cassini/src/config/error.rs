//! Every way a configuration is refused. Each message names the key (or variable), says where
//! it was set when known, and what was expected.

use std::path::PathBuf;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type. The
    /// message is the `toml` crate's: line, column, the offending line, and what was expected.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line, column, excerpt and reason.
        message: String,
    },
    /// A `CASSINI_*` variable does not name a configuration key.
    #[error(
        "unknown environment variable {name}: not a configuration key \
         (`cassini config default` lists every key; its variable is CASSINI_ and the key's path \
         in capitals with _ for .)"
    )]
    UnknownEnv {
        /// The variable.
        name: String,
    },
    /// A `CASSINI_*` variable's value does not fit its key.
    #[error("environment variable {name}={value:?} (key {key}): expected {expected}")]
    Env {
        /// The variable.
        name: String,
        /// The key it overrides.
        key: String,
        /// Its value.
        value: String,
        /// What the key takes.
        expected: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("{key}{location}: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// Where it was set (` (FILE line N)`), or empty.
        location: String,
        /// Why, and what is expected.
        reason: String,
    },
}
