//! The command-line grammar. Command names, flags and file names here are a contract with
//! users' scripts: add to them, never rename them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::config::{Congestion, LogFormat};

/// Cassini: a message broker over QUIC with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "cassini", version, about)]
pub(crate) struct Cli {
    /// Log output format: `pretty` (the default) or `json`. For `serve` it overrides
    /// `log.format` from the configuration.
    #[arg(long, global = true, value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the broker.
    ///
    /// Settings come from defaults, then `--config FILE`, then `CASSINI_*` environment
    /// variables, then these flags (see docs/CONFIGURATION.md).
    Serve(Box<ServeArgs>),
    /// Check or print a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A refreshing terminal view of a broker's monitoring endpoint (`serve --monitor`):
    /// counts, rates, drops, connections and topics. On a terminal `q` (or Esc, Ctrl-C) quits;
    /// `--once` prints one screen and exits.
    #[command(visible_alias = "stats")]
    Top(TopArgs),
    /// Ask a running broker how it is: `ping` measures round trips, `check` gives a verdict
    /// for monitoring systems, `info` shows its version, limits and settings, `report` lists its
    /// connections or subscriptions.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// A cluster's Raft membership (docs/CLUSTERING.md, "Membership changes"), through a
    /// member's monitoring endpoint and its token: `members` lists the voters, learners and
    /// leader; `add NAME` makes a running node a voting member, `remove NAME` takes one out.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Named sets of connection settings (server, certificates, client name, server name,
    /// monitoring endpoint), so commands against a broker need no repeated flags.
    ///
    /// Every client command takes each setting from its flag, else its environment variable
    /// (`CASSINI_SERVER`, `CASSINI_CERTS`, `CASSINI_NAME`, `CASSINI_SERVER_NAME`), else the
    /// context (`--context NAME` / `CASSINI_CONTEXT`, else the selected one), else the
    /// default. Stored in `$XDG_CONFIG_HOME/cassini/` (else `~/.config/cassini/`).
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
    /// Print a shell completion script (e.g. `cassini completions bash > /etc/bash_completion.d/cassini`).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Create and issue certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a cluster of several brokers on loopback in this one process (docs/CLUSTERING.md):
    /// each node has its own client address (printed) and talks real QUIC to the others.
    /// Development certificates are made in `--certs` on first run. Ctrl-C stops it.
    Demo(DemoArgs),
    /// Measure the broker (in-process, over real QUIC on loopback).
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// Publish a message.
    ///
    /// The body is MESSAGE, standard input (`-`) or `--file F`, as bytes (empty and binary
    /// bodies allowed, up to the broker's payload limit); `--lines` publishes each line as a
    /// message. `{{Count}}` in the body becomes the message's number, from 1.
    ///
    /// Waits until the broker has read every publish, then exits 0, or 1 with the broker's
    /// reason (`error: the broker refused ...: NOT_AUTHORIZED ...`) if it refused any. With
    /// `--ack` each publish waits for the broker's acknowledgement; the first one not
    /// acknowledged ends it with exit status 1 and the reason.
    Pub(PubArgs),
    /// Subscribe and print messages.
    ///
    /// Each message is printed as `[#N] Received on "TOPIC"`, its headers as `KEY: VALUE`
    /// lines, then its payload and an empty line (as `nats sub`); `--raw` prints the payload
    /// only, `--json` one JSON object. SIGINT and SIGTERM end it with exit status 0: with a
    /// goodbye (the session ends), or with `--session NAME` by leaving the named session for
    /// the next `sub`.
    Sub(SubArgs),
    /// Send a request and print the first reply (or the first `--replies N`).
    ///
    /// Exit status: 0 with a reply (printed to stdout; with `--replies N`, N replies), 2 when
    /// no reply (fewer than N) came within `--timeout`, 3 when nobody subscribes to the topic (`error: no responders on TOPIC`), 4
    /// when the reply says the responder failed (it carries an `error` header, as a failing
    /// `reply --command` sends; the reply is still printed), 1 on other errors.
    Req(ReqArgs),
    /// Print the broker's system events as they happen (docs/EVENTS.md).
    ///
    /// Subscribes to `$SYS.event.>` (or `$SYS.event.KIND` for each `--kind`) and prints one
    /// line per event: the time (UTC), the kind and the fields as `key=value`; `--json` prints
    /// each payload as it is. Needs an identity the broker's ACL lets read `$SYS.>` (none may by
    /// default); otherwise it ends with exit status 1 and `NOT_AUTHORIZED`. Exit status 2 when
    /// `--timeout` passes before `--count` events. SIGINT and SIGTERM end it with exit status 0.
    Events(EventsArgs),
    /// Answer requests on a topic.
    ///
    /// Serves requests one at a time until interrupted, or until `--count` requests were
    /// answered. Prints `serving TOPIC` to stderr once subscribed. Messages without a reply
    /// topic are skipped with a warning. SIGINT and SIGTERM end it with a goodbye, exit 0.
    Reply(ReplyArgs),
}

impl Command {
    /// The log level of a tool when `RUST_LOG` is not set: tools stay quiet (`serve` takes its
    /// level from its configuration).
    pub(crate) fn default_log_level(&self) -> &'static str {
        "warn"
    }
}

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    pub(crate) monitor: MonitorArgs,
    /// Use this context's `monitor` and `monitor_token_file` (default: the selected context).
    #[arg(long, env = "CASSINI_CONTEXT", value_name = "NAME")]
    pub(crate) context: Option<String>,
    /// Seconds between refreshes (fractions allowed, at least 0.1).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub(crate) interval: f64,
    /// Print one screen (without rates) and exit: for scripts.
    #[arg(long)]
    pub(crate) once: bool,
    /// Most connections and topics listed.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: usize,
}

/// Where a broker's monitoring endpoint is.
#[derive(Debug, Args)]
pub(crate) struct MonitorArgs {
    /// The broker's monitoring endpoint (its `--monitor` / `monitor.listen`): `HOST:PORT` or
    /// `http://HOST:PORT` [default: the context's `monitor`, else 127.0.0.1:8222; `server
    /// info` has no fallback and says the endpoint is unknown].
    #[arg(long, value_name = "ADDR")]
    pub(crate) monitor: Option<String>,
    /// File holding the monitoring endpoint's bearer token (its `monitor.token_file`); without
    /// it, an endpoint that requires a token answers 401 [default: the context's
    /// `monitor_token_file`].
    #[arg(long, value_name = "FILE")]
    pub(crate) monitor_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Print the Raft group's voters, learners and leader as the member asked knows them.
    Members(ClusterMembersArgs),
    /// Make node NAME a voting member: it is added as a learner, catches up with the log
    /// (from a snapshot if needed), then the voters change through joint consensus. NAME must
    /// be running and linked to the cluster: its `cluster.peers` lists a member (it dials them,
    /// and they dial back). Waits up to 10 s for the change to complete.
    Add(ClusterChangeArgs),
    /// Take node NAME out of the Raft group (through joint consensus); stop it afterwards.
    Remove(ClusterChangeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ClusterMembersArgs {
    /// Print the endpoint's JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) monitor: MonitorArgs,
    /// Use this context's monitoring endpoint and token file (default: the selected context).
    #[arg(long, env = "CASSINI_CONTEXT", value_name = "NAME")]
    pub(crate) context: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterChangeArgs {
    /// The node's name (its certificate's `cassini-node:NAME`, its `cluster.node`).
    #[arg(value_name = "NAME")]
    pub(crate) node: String,
    /// Print the endpoint's JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) monitor: MonitorArgs,
    /// Use this context's monitoring endpoint and token file (default: the selected context).
    #[arg(long, env = "CASSINI_CONTEXT", value_name = "NAME")]
    pub(crate) context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContextCommand {
    /// Add a context (or replace the one of that name). Relative paths are stored absolute.
    Add(ContextAddArgs),
    /// Make a context the one client commands use when `--context` is not given.
    Select {
        /// The context.
        name: String,
    },
    /// List the contexts; `*` marks the selected one.
    #[command(visible_alias = "ls")]
    List,
    /// Print a context's settings (default: the selected one) as TOML.
    Show {
        /// The context.
        name: Option<String>,
    },
    /// Remove a context (and unselect it if it was selected).
    #[command(visible_alias = "remove")]
    Rm {
        /// The context.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ContextAddArgs {
    /// The context's name: 1 to 64 letters, digits, '-', '_', '.'.
    #[arg(value_name = "CONTEXT")]
    pub(crate) context: String,
    /// Broker address(es), comma-separated.
    #[arg(short, long)]
    pub(crate) server: Option<String>,
    /// Certificate directory holding `ca.crt` and `client-NAME.crt`/`.key`.
    #[arg(long)]
    pub(crate) certs: Option<PathBuf>,
    /// Client name: selects `client-NAME.crt` and `client-NAME.key`.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Name to verify the server certificate against (default: the host of `--server`).
    #[arg(long)]
    pub(crate) server_name: Option<String>,
    /// The broker's monitoring endpoint, for `top` and `server info|report`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) monitor: Option<String>,
    /// File holding the monitoring endpoint's bearer token.
    #[arg(long, value_name = "FILE")]
    pub(crate) monitor_token_file: Option<PathBuf>,
    /// What the context is for (shown by `context list`).
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// Select it too.
    #[arg(long)]
    pub(crate) select: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServerCommand {
    /// Connect and measure round trips on the control stream (`Ping`/`Pong`).
    Ping(ServerPingArgs),
    /// Connect and ping once, within `--timeout`: prints `CASSINI OK - ...` and exits 0, or
    /// `CASSINI CRITICAL - reason` and exits 2 (the convention of Nagios-style checks).
    Check(ServerCheckArgs),
    /// Connect and show what the broker says of itself: the identity it read from this
    /// client's certificate, its limits (from `Welcome`), the round trip; with a monitoring
    /// endpoint (`--monitor`, or the context's) also its version, uptime, addresses, identity
    /// rule, storage and counts (from `/varz`).
    Info(ServerInfoArgs),
    /// List the broker's connections or subscriptions as a table, read from its monitoring
    /// endpoint (`/connz`, `/subz`): `--monitor ADDR`, else the context's `monitor`, else
    /// 127.0.0.1:8222.
    Report(ServerReportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServerInfoArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) monitor: MonitorArgs,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

/// What `server report` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportWhat {
    /// Open connections (`/connz`).
    Connections,
    /// Subscriptions and their queues (`/subz`).
    Subscriptions,
}

#[derive(Debug, Args)]
pub(crate) struct ServerReportArgs {
    /// What to list.
    pub(crate) what: ReportWhat,
    /// Print the endpoint's JSON page as it is.
    #[arg(long)]
    pub(crate) json: bool,
    /// Most rows (the endpoint's `limit`, at most 10,000).
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) monitor: MonitorArgs,
    /// Use this context's monitoring endpoint and token file (default: the selected context).
    #[arg(long, env = "CASSINI_CONTEXT", value_name = "NAME")]
    pub(crate) context: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServerPingArgs {
    /// How many pings.
    #[arg(short, long, default_value_t = 3)]
    pub(crate) count: u32,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServerCheckArgs {
    /// Seconds the whole check may take (fractions allowed).
    #[arg(short, long, default_value_t = 5.0)]
    pub(crate) timeout: f64,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a configuration file (with the current `CASSINI_*` environment) without
    /// starting: exit 0 and `FILE: ok`, or exit 1 with the key, the line and what was expected.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a configuration file holding every key at its default, each with a comment.
    Default,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a CA, a server certificate and client certificates in a directory.
    Init(CertsInitArgs),
    /// Issue a client certificate signed by the directory's existing CA.
    Issue(CertsIssueArgs),
    /// Revoke a client's certificate: add `client-NAME.crt` to `crl.pem`, signed by the CA. A
    /// broker serving the directory reloads it and closes that client's connections. With
    /// `--node NAME`, a cluster node's `node-NAME.crt`: the nodes serving the directory close
    /// their links to that node and refuse its next ones.
    Revoke(CertsRevokeArgs),
    /// Issue a new server certificate and key from the directory's CA, keeping its names. A
    /// broker serving the directory reloads it: new clients get the new certificate, live
    /// connections continue.
    RotateServer(CertsRotateServerArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CertsRevokeArgs {
    /// The client's name: selects `client-NAME.crt`.
    #[arg(required_unless_present = "node", conflicts_with = "node")]
    pub(crate) name: Option<String>,
    /// Revoke a cluster node's certificate instead (`node-NAME.crt`).
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// The directory holding `ca.crt`, `ca.key` and the client's certificate.
    #[arg(long, default_value = "certs")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CertsRotateServerArgs {
    /// The directory holding `ca.crt`, `ca.key` and `server.crt`.
    #[arg(long, default_value = "certs")]
    pub(crate) dir: PathBuf,
    /// A further name (DNS name or IP address) for the new certificate; repeatable. The old
    /// certificate's names are kept.
    #[arg(long = "server-name")]
    pub(crate) server_names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CertsInitArgs {
    /// Where to write the files.
    #[arg(long, default_value = "certs")]
    pub(crate) dir: PathBuf,
    /// An extra name (DNS name or IP address) for the server certificate; repeatable.
    /// localhost, 127.0.0.1 and ::1 are always included. With an existing CA the server
    /// certificate is kept unless this is given.
    #[arg(long = "server-name")]
    pub(crate) server_names: Vec<String>,
    /// A client to issue a certificate for (again, if it has one); repeatable. Default: `dev`,
    /// written only if the directory has no `client-dev` certificate.
    #[arg(long = "client")]
    pub(crate) clients: Vec<String>,
    /// A cluster node to issue a node certificate for (`node-NAME.crt`); repeatable.
    #[arg(long = "node")]
    pub(crate) nodes: Vec<String>,
    /// Replace an existing CA (every certificate it signed stops being trusted).
    #[arg(long)]
    pub(crate) force_new_ca: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: u16,
    /// Client port of the first node; the others follow it. 0: any free ports.
    #[arg(long, default_value_t = 7711)]
    pub(crate) base_port: u16,
    /// The certificate directory (development certificates are made there if missing).
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CertsIssueArgs {
    /// The client's name: its identity, in the certificate's SAN and CN.
    #[arg(required_unless_present = "node", conflicts_with = "node")]
    pub(crate) name: Option<String>,
    /// Issue a cluster node certificate instead (`node-NAME.crt`, `node-NAME.key`).
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// The directory holding `ca.crt` and `ca.key`.
    #[arg(long, default_value = "certs")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (TOML); `cassini config default` prints one with every key.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (UDP) [default: 127.0.0.1:7700; key `listen`].
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Certificate directory; development certificates are created there if it has none
    /// [default: certs; key `certs.dir`].
    #[arg(long)]
    pub(crate) certs: Option<PathBuf>,
    /// How long a session outlives a dropped connection, in seconds [default: 300; key
    /// `sessions.expiry_secs`].
    #[arg(long)]
    pub(crate) session_expiry: Option<u64>,
    /// Close a connection after this many seconds without a packet from the client
    /// [default: 30; key `quic.idle_timeout_secs`].
    #[arg(long)]
    pub(crate) idle_timeout: Option<u64>,
    /// The congestion controller of the broker's connections: `cubic` or `bbr` (does not
    /// read random loss as congestion; experimental in quinn) [default: cubic; key
    /// `quic.congestion`].
    #[arg(long, value_enum)]
    pub(crate) congestion: Option<Congestion>,
    /// Serve the HTTP monitoring endpoint on this address (e.g. 127.0.0.1:8222; port 0 picks
    /// a free port, which the log reports); its `/` is a live status page for a browser
    /// [default: off; keys `monitor.*`].
    #[arg(long, value_name = "ADDR")]
    pub(crate) monitor: Option<SocketAddr>,
    /// Serve MQTT 3.1.1 and 5.0 clients on this TCP address (TLS with client certificates from
    /// the same CA; docs/MQTT.md) [default: off; key `mqtt.listen`].
    #[arg(long, value_name = "ADDR")]
    pub(crate) mqtt: Option<SocketAddr>,
    /// File holding the monitoring endpoint's bearer token: every endpoint but `/` (the status
    /// page), `/healthz` and `/readyz` then requires `Authorization: Bearer TOKEN` [default:
    /// none; key `monitor.token_file`].
    #[arg(long, value_name = "FILE")]
    pub(crate) monitor_token_file: Option<PathBuf>,
    /// ACL file (TOML) saying which identity may publish and subscribe where; reloaded on
    /// SIGHUP and when it changes. Without it every authenticated client may do everything on
    /// non-system topics but read other identities' reply inboxes [default: none; key
    /// `security.acl_file`].
    #[arg(long, value_name = "FILE")]
    pub(crate) acl: Option<PathBuf>,
    /// Which client certificate name is the identity: `default` (URI SAN, else DNS SAN, else
    /// CN), `uri:PREFIX` (the first URI SAN starting with PREFIX), `dns` or `cn`
    /// [default: default; key `security.identity_rule`].
    #[arg(long, value_name = "RULE")]
    pub(crate) identity_rule: Option<String>,
    /// When new clients must prove their address with a QUIC Retry: `never`, `under-load`
    /// (while 256 or more handshakes are in progress) or `always` [default: under-load; key
    /// `security.address_validation`].
    #[arg(long, value_name = "WHEN")]
    pub(crate) address_validation: Option<String>,
    /// With `crl.pem` present, accept clients whose revocation status no CRL covers (by
    /// default they are refused: revocation fails closed) [key
    /// `security.allow_unknown_revocation`].
    #[arg(long)]
    pub(crate) allow_unknown_revocation: bool,
    /// Refuse every client once `crl.pem`'s next-update time has passed [key
    /// `security.enforce_crl_expiry`].
    #[arg(long)]
    pub(crate) enforce_crl_expiry: bool,
    /// Refuse to start when the CRL file is missing (once a CRL has been in force, a missing
    /// or unreadable CRL file always keeps the last good one) [key `certs.require_crl`].
    #[arg(long)]
    pub(crate) require_crl: bool,
    /// Where state is kept: `memory` (lost on restart) or `disk` (sessions, subscriptions,
    /// at-least-once backlogs, retained values and the dedupe window survive a crash; see
    /// docs/DURABILITY.md) [default: memory].
    #[arg(long, value_enum)]
    pub(crate) storage: Option<StorageArg>,
    /// The directory of the disk store (`--storage disk`); created if missing [default: data].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// When an acknowledged publish is confirmed with `--storage disk`: `always` after it is on
    /// stable storage (fsync), `relaxed` as soon as it is routed (an acknowledged message can
    /// be lost if the broker dies within milliseconds) [default: always].
    #[arg(long, value_enum)]
    pub(crate) storage_sync: Option<SyncArg>,
    /// The most bytes of stored records with `--storage disk`; publishes that would store more
    /// are refused with STORAGE_FULL [default: 1 GiB].
    #[arg(long)]
    pub(crate) storage_max_bytes: Option<u64>,
    /// Drop a message that waited this many seconds unsent in a subscription's queue (the
    /// client gets a Gap); 0: no age bound. Sent, unacknowledged messages are never dropped
    /// [default: 0].
    #[arg(long)]
    pub(crate) max_backlog_age: Option<u64>,
    /// Join the cluster NAME (docs/CLUSTERING.md) [default: none, a standalone broker; key
    /// `cluster.name`].
    #[arg(long, value_name = "NAME")]
    pub(crate) cluster: Option<String>,
    /// This node's name in the cluster; its certificate is `node-NAME.crt` [key
    /// `cluster.node`].
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// The cluster address (UDP) [default: 127.0.0.1:7701; key `cluster.listen`].
    #[arg(long, value_name = "ADDR")]
    pub(crate) cluster_listen: Option<SocketAddr>,
    /// A node's cluster address; repeatable (this node's own may be among them). Replaces
    /// `cluster.peers` when given [key `cluster.peers`].
    #[arg(long = "peer", value_name = "ADDR")]
    pub(crate) peers: Vec<SocketAddr>,
    /// This node's client address as clients should dial it (host:port), listed in clients'
    /// Welcome [default: the bound client address unless a wildcard; key
    /// `cluster.advertise`].
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) cluster_advertise: Option<String>,
    /// A voting member of the cluster's Raft group, by node name; repeatable (list this node
    /// too). Turns on replicated session ownership. Replaces `cluster.members` when given [key
    /// `cluster.members`].
    #[arg(long = "cluster-member", value_name = "NAME")]
    pub(crate) members: Vec<String>,
}

/// Where the broker keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StorageArg {
    /// In memory.
    Memory,
    /// On disk, in `--data-dir`.
    Disk,
}

/// When an acknowledged publish is confirmed in disk mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SyncArg {
    /// After it is on stable storage.
    Always,
    /// Once it is routed; the write follows at once.
    Relaxed,
}

/// Where and as whom a tool connects. Each setting: the flag, else its environment variable,
/// else the context, else the default (see `crate::context`).
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Broker address(es), comma-separated: tried in order [default: the context's `server`,
    /// else 127.0.0.1:7700].
    #[arg(short, long, env = "CASSINI_SERVER", value_name = "ADDRS")]
    pub(crate) server: Option<String>,
    /// Certificate directory holding `ca.crt` and `client-NAME.crt`/`.key` [default: the
    /// context's `certs`, else certs].
    #[arg(long, env = "CASSINI_CERTS", value_name = "DIR")]
    pub(crate) certs: Option<PathBuf>,
    /// Client name: selects `client-NAME.crt` and `client-NAME.key` [default: the context's
    /// `name`, else dev].
    #[arg(long, env = "CASSINI_NAME")]
    pub(crate) name: Option<String>,
    /// Name to verify the server certificate against [default: the context's `server_name`
    /// with the context's server, else the host of the first `--server` address when it is a
    /// name, else localhost].
    #[arg(long, env = "CASSINI_SERVER_NAME")]
    pub(crate) server_name: Option<String>,
    /// Use this context instead of the selected one (`cassini context list`).
    #[arg(long, env = "CASSINI_CONTEXT", value_name = "NAME")]
    pub(crate) context: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    /// Topic to publish to.
    pub(crate) topic: String,
    /// The message; `-` reads it from standard input. Required unless `--file` is given.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(crate) message: Option<String>,
    /// Read the message from this file (its bytes, as they are).
    #[arg(long, value_name = "F")]
    pub(crate) file: Option<PathBuf>,
    /// Publish each line of the body (without its line ending) as a message, as soon as it is
    /// read (so `tail -f log | cassini pub T - --lines` streams); an empty input publishes
    /// nothing.
    #[arg(long)]
    pub(crate) lines: bool,
    /// How many times to publish it (with `--lines`: how many times to publish every line).
    #[arg(short, long, default_value_t = 1)]
    pub(crate) count: u64,
    /// Seconds to wait between two messages (fractions allowed).
    #[arg(long, value_name = "SECS")]
    pub(crate) sleep: Option<f64>,
    /// Acknowledged publish: wait until the broker confirms each message; exit 1 with the
    /// reason at the first one it refuses or does not confirm in time.
    #[arg(long)]
    pub(crate) ack: bool,
    /// A header `KEY=VALUE`; repeatable.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Keep the message as the topic's retained value, replayed to every new subscriber; an
    /// empty MESSAGE clears it.
    #[arg(long)]
    pub(crate) retain: bool,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    /// Filter to subscribe to (`*` one token, `>` the rest).
    pub(crate) topic: String,
    /// Exit 0 after this many messages.
    #[arg(short, long)]
    pub(crate) count: Option<u64>,
    /// Give up after this many seconds (fractions allowed) and exit with status 2, unless
    /// `--count` messages arrived first.
    #[arg(short, long)]
    pub(crate) timeout: Option<f64>,
    /// Join this queue group: each message goes to one of the subscribers sharing the filter
    /// and group (retained values are not replayed to them).
    #[arg(short, long, value_name = "GROUP")]
    pub(crate) queue: Option<String>,
    /// Print one JSON object per message, with topic, sequence and headers.
    #[arg(long, conflicts_with = "raw")]
    pub(crate) json: bool,
    /// Print each message's payload only, followed by a newline.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Subscribe at least once: the broker keeps each message until it is printed and sends
    /// it again after a lost connection.
    #[arg(long, conflicts_with = "datagram")]
    pub(crate) ack: bool,
    /// Receive as QUIC datagrams: newest first, never retransmitted; losses are counted and
    /// reported on stderr at the end. Messages too large for a datagram are dropped and counted.
    #[arg(long)]
    pub(crate) datagram: bool,
    /// Use the named session of this identity (created the first time, resumed later; 1 to
    /// 128 letters, digits, '-', '_', '.'). On exit the session is left, not ended: the broker
    /// keeps queueing for it until `sessions.expiry_secs`, and the next `sub --session NAME` with
    /// the same topic and options gets what was published meanwhile.
    #[arg(long, value_name = "NAME")]
    pub(crate) session: Option<String>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only events of this kind; repeatable.
    #[arg(short, long, value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(
        cassini_broker::events::EventKind::ALL.map(|kind| kind.as_str())
    ))]
    pub(crate) kind: Vec<String>,
    /// Print each event's JSON payload as it is, one per line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit 0 after this many events.
    #[arg(short, long)]
    pub(crate) count: Option<u64>,
    /// Give up after this many seconds (fractions allowed) and exit with status 2, unless
    /// `--count` events arrived first.
    #[arg(short, long, value_name = "SECS")]
    pub(crate) timeout: Option<f64>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReqArgs {
    /// Topic to send the request to.
    pub(crate) topic: String,
    /// The request payload.
    pub(crate) message: String,
    /// Seconds to wait for a reply (fractions allowed); with `--replies N`, for all N.
    #[arg(short, long, value_name = "SECS", default_value_t = 5.0)]
    pub(crate) timeout: f64,
    /// Wait for this many replies (from several responders) and print each as it comes.
    /// With more than 1, replies come to an inbox of this client's own, and a request nobody
    /// subscribes to waits for `--timeout` (exit status 2) instead of failing at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) replies: u64,
    /// Print the reply as one JSON object, with topic, headers and payload.
    #[arg(long)]
    pub(crate) json: bool,
    /// A header `KEY=VALUE` on the request; repeatable.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReplyArgs {
    /// Filter to serve (`*` one token, `>` the rest).
    pub(crate) topic: String,
    /// Reply with the request's payload (the default).
    #[arg(long, conflicts_with = "command")]
    pub(crate) echo: bool,
    /// Reply with the standard output of `sh -c CMD`, run with the request payload on its
    /// standard input. A command that fails (non-zero exit, killed after 10 seconds, output
    /// over the broker's payload limit, cannot start) gets a reply with the header
    /// `error: REASON` and whatever it printed.
    #[arg(long, value_name = "CMD")]
    pub(crate) command: Option<String>,
    /// Join this queue group: each request goes to one of the responders sharing the topic and
    /// group.
    #[arg(short, long, value_name = "GROUP")]
    pub(crate) queue: Option<String>,
    /// Exit 0 after answering this many requests.
    #[arg(short, long)]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("header {raw:?} is not KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchScenario {
    /// Acknowledged-publish throughput and latency in memory and on disk (`--storage disk`),
    /// with one publisher and with `--publishers` concurrent ones.
    Durable(DurableArgs),
    /// Head-of-line isolation: the latency of a fast topic with and without a flood on another
    /// subscription of the same connection that is never read.
    Hol(HolCommand),
    /// Publish-to-delivery latency at a fixed offered rate, one publisher and one subscriber.
    Latency(LatencyCommand),
    /// Messages per second from one publisher to one subscriber, as fast as possible.
    Throughput(ThroughputCommand),
    /// Deliveries per second from one publisher to `--subscribers` subscribers on as many
    /// connections.
    Fanout(FanoutCommand),
    /// Request/reply round trips per second and their latency, against an echo responder.
    Request(RequestCommand),
    /// Opens `--count` idle mTLS connections: handshakes per second and broker memory per
    /// connection, next to a bare quinn mTLS endpoint measured in the same run.
    Connections(ConnectionsArgs),
    /// The bare quinn mTLS endpoint `connections` compares against (started by it).
    #[command(hide = true)]
    BareEndpoint(BareEndpointArgs),
    /// Latency of a reliable and a datagram subscription side by side under 0%, 1% and 5%
    /// packet loss on the subscriber's link.
    Datagram(DatagramArgs),
    /// What a cluster costs against one broker: cross-node against same-node latency, fan-out
    /// over the nodes, CPU per node-local message against a standalone broker, and the time
    /// from `kill -9` of a node to its subscriber receiving again on another node.
    Cluster(ClusterBenchArgs),
    /// What replicating named sessions costs (issue #19): acknowledged-publish throughput and
    /// latency to an at-least-once subscriber of a named session on a cluster with `members`
    /// against one broker, in memory and on disk, and the time from `kill -9` of the session's
    /// node to that session delivering again on another node.
    Sessions(SessionsBenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SessionsBenchArgs {
    /// Nodes of the in-process cluster, all of them members (the failover rounds always use
    /// three processes).
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Storage modes to measure, one after the other; repeatable.
    #[arg(long, value_enum, default_values_t = [StorageArg::Memory, StorageArg::Disk])]
    pub(crate) storage: Vec<StorageArg>,
    /// Acknowledged publishes per throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) count: u64,
    /// Acknowledged publishes in flight at once (throughput runs; the most the latency runs
    /// let wait).
    #[arg(long, default_value_t = 256)]
    pub(crate) window: usize,
    /// Offered rate of the latency runs, acknowledged publishes per second.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) rate: u64,
    /// Measured seconds per latency run; fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Unmeasured warm-up seconds per latency run.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Message size in bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Interleaved repetitions (cluster, one broker, cluster, ...); the figures are medians.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: u32,
    /// Failover rounds (`kill -9` of a named session's node), each on a new cluster of three
    /// `cassini serve` processes; 0 skips them.
    #[arg(long, default_value_t = 3)]
    pub(crate) failovers: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterBenchArgs {
    /// Nodes of the in-process cluster (the failover rounds always use three processes).
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Offered rate of the latency runs, messages per second.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) rate: u64,
    /// Measured seconds per latency run; fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Unmeasured warm-up seconds per latency run.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Message size in bytes (at least 16 for the latency runs).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Interleaved repetitions of the latency and CPU runs; the figures are medians.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: u32,
    /// Messages per CPU run (one publisher → one subscriber on one node).
    #[arg(long, default_value_t = 300_000)]
    pub(crate) count: u64,
    /// Messages of the fan-out run, each delivered to every subscriber.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) fanout_count: u64,
    /// Subscribers of the fan-out run, spread round robin over the nodes.
    #[arg(long, default_value_t = 100)]
    pub(crate) subscribers: u32,
    /// Failover rounds (`kill -9` of a subscriber's node); 0 skips them.
    #[arg(long, default_value_t = 3)]
    pub(crate) failovers: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DurableArgs {
    /// Measured seconds per case; fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Concurrent publishers of the second round (the first has one).
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// Where the disk cases keep their store (one directory per case, left in place); default:
    /// a temporary directory, removed afterwards. Put it on the disk you want to measure.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DatagramArgs {
    /// Offered rate, messages per second.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) rate: u64,
    /// Measured seconds per row; fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Message size in bytes (at least 16: phase and send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Unmeasured warm-up seconds per row.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) warmup: f64,
    /// Seeds the injected loss.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Run the broker's connections with BBR congestion control instead of Cubic.
    #[arg(long)]
    pub(crate) bbr: bool,
    /// The acknowledgement delay the broker and the bench's clients ask of each other, in
    /// milliseconds (0: ask nothing, so each keeps QUIC's 25 ms) [default: 1, as
    /// `quic.max_ack_delay_ms`].
    #[arg(long)]
    pub(crate) max_ack_delay_ms: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Which broker a scenario measures.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchTarget {
    /// Address of the broker to measure. Without it the scenario starts a broker in this
    /// process, with certificates made in memory.
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// With `--server`: the certificate directory holding `ca.crt` and `client-NAME.crt`/`.key`.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// With `--server`: the client name, selecting `client-NAME.crt` and `client-NAME.key`.
    #[arg(long, default_value = "dev")]
    pub(crate) name: String,
    /// With `--server`: the name to verify the server certificate against [default: the host
    /// of `--server` when it is a name, else localhost].
    #[arg(long)]
    pub(crate) server_name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LatencyCommand {
    #[command(flatten)]
    pub(crate) args: cassini_bench::args::LatencyArgs,
    #[command(flatten)]
    pub(crate) target: BenchTarget,
}

#[derive(Debug, Args)]
pub(crate) struct ThroughputCommand {
    #[command(flatten)]
    pub(crate) args: cassini_bench::args::ThroughputArgs,
    #[command(flatten)]
    pub(crate) target: BenchTarget,
}

#[derive(Debug, Args)]
pub(crate) struct FanoutCommand {
    #[command(flatten)]
    pub(crate) args: cassini_bench::args::FanoutArgs,
    #[command(flatten)]
    pub(crate) target: BenchTarget,
}

#[derive(Debug, Args)]
pub(crate) struct RequestCommand {
    #[command(flatten)]
    pub(crate) args: cassini_bench::args::RequestArgs,
    #[command(flatten)]
    pub(crate) target: BenchTarget,
}

#[derive(Debug, Args)]
pub(crate) struct HolCommand {
    #[command(flatten)]
    pub(crate) args: HolArgs,
    #[command(flatten)]
    pub(crate) target: BenchTarget,
}

#[derive(Debug, Args)]
pub(crate) struct HolArgs {
    /// Offered rate of the fast topic, messages per second.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) rate: u64,
    /// Measured seconds per phase (alone, then during the flood); fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Fast message size in bytes (at least 16: phase and send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Size of each flood message in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) flood_size: usize,
    /// Flood messages per second; 0 floods as fast as the client accepts them.
    #[arg(long, default_value_t = 0)]
    pub(crate) flood_rate: u64,
    /// Unmeasured warm-up seconds before the first phase.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Unmeasured seconds between starting a flood and measuring under it (the fast topic keeps
    /// flowing): 0 measures the flood's onset too, more measures its steady state.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) flood_settle: f64,
    /// Draw the three phases' latency percentile curves into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConnectionsArgs {
    /// Idle connections to open (and hold until all are open).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) count: u32,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: u32,
    /// With `--server`: the broker's process id, to read its memory from `/proc`.
    #[arg(long, value_name = "PID")]
    pub(crate) broker_pid: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) target: BenchTarget,
}

#[derive(Debug, Args)]
pub(crate) struct BareEndpointArgs {
    /// Address to listen on (UDP).
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    /// Certificate directory (`ca.crt`, `server.crt`, `server.key`).
    #[arg(long)]
    pub(crate) certs: PathBuf,
}
