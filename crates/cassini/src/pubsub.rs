//! `cassini pub` and `cassini sub`.

use std::process::ExitCode;

use crate::cli::{PubArgs, SubArgs};

pub(crate) async fn publish(_args: PubArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet wired to the client")
}

pub(crate) async fn subscribe(_args: SubArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet wired to the client")
}
