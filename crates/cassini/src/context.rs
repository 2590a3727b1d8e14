//! Contexts: named sets of connection settings (`cassini context add|select|list|show|rm`), and
//! how a client command settles where and as whom it connects.
//!
//! Each setting is taken from, in order: the command-line flag, its environment variable
//! (`CASSINI_SERVER`, `CASSINI_CERTS`, `CASSINI_NAME`, `CASSINI_SERVER_NAME`), the context
//! (`--context NAME` / `CASSINI_CONTEXT`, else the selected one), the default. `--server-name`
//! with none of those is the host of the first server address when that host is a name; for
//! an IP literal (or no host) it stays `localhost`, the name `cassini certs init` always puts
//! in the server certificate. A context's `server_name` is used only with the context's own
//! `server`: a server given by flag or environment variable takes its name from its host.
//!
//! Files, under `$XDG_CONFIG_HOME/cassini/` (else `~/.config/cassini/`): `contexts/NAME.toml`
//! per context, and `context.txt` holding the selected context's name.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::cli::{ConnectArgs, ContextAddArgs, ContextCommand, MonitorArgs};

/// The defaults when neither flag, environment nor context says.
pub(crate) const DEFAULT_SERVER: &str = "127.0.0.1:7700";
const DEFAULT_CERTS: &str = "certs";
const DEFAULT_NAME: &str = "dev";
const DEFAULT_SERVER_NAME: &str = "localhost";
/// The monitoring endpoint `cassini top` and `server report` read by default.
pub(crate) const DEFAULT_MONITOR: &str = "127.0.0.1:8222";

/// The environment variables client commands read (not configuration keys of `serve`).
pub(crate) const CLIENT_ENV: [&str; 5] = [
    "CASSINI_SERVER",
    "CASSINI_CERTS",
    "CASSINI_NAME",
    "CASSINI_SERVER_NAME",
    "CASSINI_CONTEXT",
];

/// One context as stored in `contexts/NAME.toml`. Every field is optional.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredContext {
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    /// Broker address(es), comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    /// Certificate directory (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) certs: Option<PathBuf>,
    /// Client name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Name to verify the server certificate against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_name: Option<String>,
    /// Monitoring endpoint (`HOST:PORT` or `http://HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) monitor: Option<String>,
    /// File holding the monitoring endpoint's bearer token (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) monitor_token_file: Option<PathBuf>,
}

/// Where and as whom a client command connects, settled.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) server: String,
    pub(crate) certs: PathBuf,
    pub(crate) name: String,
    pub(crate) server_name: String,
}

/// The configuration directory of contexts.
fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("cassini"));
    }
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("cassini")),
        None => bail!("no configuration directory: neither XDG_CONFIG_HOME nor HOME is set"),
    }
}

fn contexts_dir() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("contexts"))
}

fn selected_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("context.txt"))
}

/// A context name: 1 to 64 letters, digits, `-`, `_`, `.`, not starting with `.`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        bail!(
            "{name:?} is not a context name (1 to 64 letters, digits, '-', '_', '.'; not starting with '.')"
        );
    }
    Ok(())
}

fn context_file(name: &str) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    Ok(contexts_dir()?.join(format!("{name}.toml")))
}

/// Reads context `name`; an error names the file when it is missing or not valid.
pub(crate) fn load(name: &str) -> anyhow::Result<StoredContext> {
    let path = context_file(name)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!("there is no context {name:?} (`cassini context list` lists them)")
        }
        Err(err) => bail!(
            "cannot read context {name:?} from {}: {err}",
            path.display()
        ),
    };
    toml::from_str(&text).with_context(|| format!("context file {}", path.display()))
}

/// The selected context's name, if one is selected.
pub(crate) fn selected() -> anyhow::Result<Option<String>> {
    let path = selected_file()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|name| !name.is_empty())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => bail!("cannot read {}: {err}", path.display()),
    }
}

/// The context a command uses: `explicit` (from `--context` / `CASSINI_CONTEXT`), else the
/// selected one, else none.
pub(crate) fn active(explicit: Option<&str>) -> anyhow::Result<Option<(String, StoredContext)>> {
    let name = match explicit {
        Some(name) => Some(name.to_owned()),
        None => selected()?,
    };
    match name {
        Some(name) => {
            let context = load(&name).with_context(|| {
                if explicit.is_some() {
                    "the context given by --context or CASSINI_CONTEXT".to_owned()
                } else {
                    format!(
                        "the selected context (in {}; `cassini context select NAME` changes it)",
                        selected_file()
                            .map(|path| path.display().to_string())
                            .unwrap_or_default()
                    )
                }
            })?;
            Ok(Some((name, context)))
        }
        None => Ok(None),
    }
}

/// The host of an address `HOST:PORT`, `[V6]:PORT` or `HOST`, if it is a name (not an IP
/// literal).
pub(crate) fn host_name(address: &str) -> Option<&str> {
    let address = address.trim();
    if address.parse::<SocketAddr>().is_ok() || address.parse::<IpAddr>().is_ok() {
        return None;
    }
    if address.starts_with('[') {
        return None;
    }
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    };
    (!host.is_empty() && host.parse::<IpAddr>().is_err()).then_some(host)
}

/// `--server-name`'s default for `server` (comma-separated addresses: the first one's host).
pub(crate) fn default_server_name(server: &str) -> String {
    let first = server.split(',').next().unwrap_or_default();
    host_name(first).unwrap_or(DEFAULT_SERVER_NAME).to_owned()
}

impl ConnectArgs {
    /// Settles the server, certificates, name and server name (see the module docs).
    pub(crate) fn resolve(&self) -> anyhow::Result<Target> {
        let context = active(self.context.as_deref())?.map(|(_, context)| context);
        let context = context.unwrap_or_default();
        let (server, server_from_context) = match (&self.server, &context.server) {
            (Some(server), _) => (server.clone(), false),
            (None, Some(server)) => (server.clone(), true),
            (None, None) => (DEFAULT_SERVER.to_owned(), false),
        };
        let server_name = match (&self.server_name, &context.server_name) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) if server_from_context => name.clone(),
            _ => default_server_name(&server),
        };
        Ok(Target {
            server,
            certs: self
                .certs
                .clone()
                .or(context.certs)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CERTS)),
            name: self
                .name
                .clone()
                .or(context.name)
                .unwrap_or_else(|| DEFAULT_NAME.to_owned()),
            server_name,
        })
    }
}

/// A monitoring endpoint and its token, settled.
pub(crate) struct MonitorTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) token: Option<cassini_monitor::BearerToken>,
}

impl MonitorArgs {
    /// The monitoring endpoint: `--monitor`, else the context's `monitor`, else `fallback`
    /// (`None`: no endpoint). The token file likewise.
    pub(crate) async fn resolve(
        &self,
        context: Option<&str>,
        fallback: Option<&str>,
    ) -> anyhow::Result<Option<MonitorTarget>> {
        let stored = active(context)?.map(|(_, context)| context);
        let stored = stored.unwrap_or_default();
        let Some(monitor) = self
            .monitor
            .clone()
            .or(stored.monitor)
            .or(fallback.map(str::to_owned))
        else {
            return Ok(None);
        };
        let addr = monitor_addr(&monitor).await?;
        let token = match self
            .monitor_token_file
            .clone()
            .or(stored.monitor_token_file)
        {
            Some(file) => Some(
                cassini_monitor::BearerToken::from_file(&file)
                    .context("reading the monitoring token")?,
            ),
            None => None,
        };
        Ok(Some(MonitorTarget { addr, token }))
    }
}

/// `HOST:PORT` or `http://HOST:PORT[/]` as a socket address.
pub(crate) async fn monitor_addr(monitor: &str) -> anyhow::Result<SocketAddr> {
    let trimmed = monitor.trim();
    if trimmed.starts_with("https://") {
        bail!("--monitor {monitor}: the monitoring endpoint is plain HTTP (http://HOST:PORT)");
    }
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.contains('/') {
        bail!("--monitor {monitor}: give HOST:PORT or http://HOST:PORT, without a path");
    }
    if let Ok(addr) = bare.parse::<SocketAddr>() {
        return Ok(addr);
    }
    tokio::net::lookup_host(bare)
        .await
        .with_context(|| format!("--monitor {monitor}: not HOST:PORT, or the host is unknown"))?
        .next()
        .with_context(|| format!("--monitor {monitor}: the host has no address"))
}

/// `cassini context ...`.
pub(crate) fn run(command: ContextCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContextCommand::Add(args) => add(args),
        ContextCommand::Select { name } => {
            load(&name)?;
            write_file(&selected_file()?, format!("{name}\n").as_bytes())?;
            println!("selected context {name}");
            Ok(ExitCode::SUCCESS)
        }
        ContextCommand::List => list(),
        ContextCommand::Show { name } => {
            let name = match name.or(selected()?) {
                Some(name) => name,
                None => bail!("no context is selected; name one: cassini context show NAME"),
            };
            let context = load(&name)?;
            let text = toml::to_string(&context).context("describing the context")?;
            print_out(&format!("# context {name}\n{text}"))
        }
        ContextCommand::Rm { name } => {
            let path = context_file(&name)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    bail!("there is no context {name:?}")
                }
                Err(err) => bail!("cannot remove {}: {err}", path.display()),
            }
            if selected()?.as_deref() == Some(name.as_str()) {
                let file = selected_file()?;
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
            }
            println!("removed context {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An absolute form of `path` (relative to the current directory), so the context works
/// from anywhere.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

fn add(args: ContextAddArgs) -> anyhow::Result<ExitCode> {
    let path = context_file(&args.context)?;
    if let Some(monitor) = &args.monitor {
        let bare = monitor.trim().strip_prefix("http://").unwrap_or(monitor);
        if monitor.starts_with("https://") || bare.trim_end_matches('/').contains('/') {
            bail!("--monitor {monitor}: give HOST:PORT or http://HOST:PORT");
        }
    }
    let context = StoredContext {
        description: args.description,
        server: args.server,
        certs: args.certs.as_deref().map(absolute).transpose()?,
        name: args.name,
        server_name: args.server_name,
        monitor: args.monitor,
        monitor_token_file: args
            .monitor_token_file
            .as_deref()
            .map(absolute)
            .transpose()?,
    };
    let text = toml::to_string(&context).context("describing the context")?;
    let existed = path.exists();
    write_file(&path, text.as_bytes())?;
    println!(
        "{} context {} ({})",
        if existed { "replaced" } else { "added" },
        args.context,
        path.display()
    );
    if args.select {
        write_file(&selected_file()?, format!("{}\n", args.context).as_bytes())?;
        println!("selected context {}", args.context);
    }
    Ok(ExitCode::SUCCESS)
}

fn list() -> anyhow::Result<ExitCode> {
    let dir = contexts_dir()?;
    let mut names = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                let file = entry.file_name();
                let Some(name) = file.to_str().and_then(|file| file.strip_suffix(".toml")) else {
                    continue;
                };
                if check_name(name).is_ok() {
                    names.push(name.to_owned());
                }
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => bail!("cannot list {}: {err}", dir.display()),
    }
    names.sort();
    if names.is_empty() {
        crate::report(format_args!(
            "no contexts (in {}); `cassini context add NAME --server ADDR ...` adds one",
            dir.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = selected()?;
    let mut out = String::new();
    for name in names {
        let mark = if chosen.as_deref() == Some(name.as_str()) {
            "*"
        } else {
            " "
        };
        let (server, description) = match load(&name) {
            Ok(context) => (
                context.server.unwrap_or_else(|| "-".to_owned()),
                context.description.unwrap_or_default(),
            ),
            Err(err) => ("?".to_owned(), format!("({err:#})")),
        };
        out.push_str(
            format!("{mark} {name:<16} {server:<28} {description}")
                .trim_end()
                .to_owned()
                .as_str(),
        );
        out.push('\n');
    }
    print_out(&out)
}

/// Writes `bytes` to `path` (creating its directory) through a temporary file and a rename.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// Writes a command's whole output to standard output (a closed pipe is an error, not a panic).
pub(crate) fn print_out(text: &str) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_when_it_is_a_name() {
        assert_eq!(default_server_name("broker.example:7700"), "broker.example");
        assert_eq!(default_server_name("a.example:1,b.example:2"), "a.example");
        assert_eq!(default_server_name("broker.example"), "broker.example");
        assert_eq!(default_server_name("127.0.0.1:7700"), "localhost");
        assert_eq!(default_server_name("[::1]:7700"), "localhost");
        assert_eq!(default_server_name("::1"), "localhost");
        assert_eq!(default_server_name(""), "localhost");
    }
}
