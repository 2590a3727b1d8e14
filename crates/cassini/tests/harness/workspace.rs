//! [`Workspace`]: `cassini` run as an operator runs it, from a directory of its own with
//! certificates, a monitor token and a private configuration home.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{cassini, init_certs, output_within, Broker, Serve, DEADLINE};

/// The monitor token of every workspace (in [`Workspace::token_file`]).
const TOKEN: &str = "ops-test-token-7c1e";

/// A temporary directory with certificates (`certs/`, made by `cassini certs init`), a monitor
/// token file (`monitor.token`) and a configuration home (`config/`, the `XDG_CONFIG_HOME` of
/// every command run here, so contexts never touch the user's). Removed on drop.
pub(crate) struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// Certificates for the server and `clients`, and the token file.
    pub(crate) fn new(clients: &[&str]) -> Self {
        let workspace = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        init_certs(&workspace.certs(), clients);
        std::fs::write(workspace.token_file(), format!("{TOKEN}\n")).expect("token file");
        workspace
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The certificate directory.
    pub(crate) fn certs(&self) -> PathBuf {
        self.path().join("certs")
    }

    /// The file holding [`Workspace::token`].
    pub(crate) fn token_file(&self) -> PathBuf {
        self.path().join("monitor.token")
    }

    /// The monitor token.
    pub(crate) fn token(&self) -> &'static str {
        TOKEN
    }

    /// `XDG_CONFIG_HOME` of the commands run here.
    pub(crate) fn config_home(&self) -> PathBuf {
        self.path().join("config")
    }

    /// [`cassini`]`(ARGS)` in this directory, with this workspace's configuration home.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = cassini(args);
        command
            .current_dir(self.path())
            .env("XDG_CONFIG_HOME", self.config_home());
        command
    }

    /// Runs `cassini ARGS` to completion (within [`DEADLINE`]).
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        output_within(self.command(args), DEADLINE)
    }

    /// Runs `cassini ARGS` with extra environment variables.
    pub(crate) fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        output_within(command, DEADLINE)
    }

    /// A [`Broker`] on this workspace's certificates with its monitoring endpoint on
    /// `127.0.0.1:0`; with `token`, the endpoint requires [`Workspace::token`].
    pub(crate) fn broker(&self, token: bool) -> Broker {
        let mut serve = Serve::new(&["--monitor", "127.0.0.1:0", "--certs"])
            .arg(self.certs())
            .env("XDG_CONFIG_HOME", self.config_home());
        if token {
            serve = serve.arg("--monitor-token-file").arg(self.token_file());
        }
        serve.start()
    }
}
