//! One line of documentation per configuration key, in file order. `cassini config default`
//! writes the defaults with these lines as comments; the environment variable of a key is
//! `CASSINI_` and its dotted path in capitals with `_` for `.` (`limits.max_connections` is
//! `CASSINI_LIMITS_MAX_CONNECTIONS`). A test checks this list names exactly the keys of
//! [`Settings`](super::Settings).

use std::fmt::Write as _;

use super::Settings;

/// A key and what it does.
pub(crate) struct KeyDoc {
    /// The dotted path, e.g. `limits.max_connections`.
    pub(crate) path: &'static str,
    /// One line for the reader of the file.
    pub(crate) doc: &'static str,
}

/// What each table is for, in file order (`""` is the top level).
pub(crate) const SECTIONS: &[(&str, &str)] = &[
    ("", "Where the broker listens."),
    (
        "certs",
        "The broker's certificates (mutual TLS: clients must present one signed by `ca`).",
    ),
    (
        "limits",
        "Size and count limits, announced to clients and enforced on every frame.",
    ),
    (
        "queue",
        "Per-subscription queue bounds: a stalled subscriber holds at most these.",
    ),
    ("sessions", "Session lifetime."),
    (
        "events",
        "System events on $SYS.event.> (docs/EVENTS.md); readable only by identities an ACL rule naming $SYS allows.",
    ),
    (
        "dedupe",
        "The window in which a retried acknowledged publish is recognised as a duplicate.",
    ),
    ("shutdown", "Graceful shutdown on SIGTERM or SIGINT."),
    ("quic", "QUIC transport."),
    (
        "monitor",
        "The HTTP monitoring endpoint: /healthz /readyz /metrics /varz /connz /subz /topicz.",
    ),
    ("log", "Log lines, on standard error."),
    (
        "security",
        "Authorization (ACL), the identity rule, address validation and revocation.",
    ),
    (
        "storage",
        "Where sessions, queues and retained values live.",
    ),
    (
        "cluster",
        "Membership of a cluster (docs/CLUSTERING.md); without a name the broker is standalone.",
    ),
    (
        "mqtt",
        "The MQTT gateway: MQTT 3.1.1 and 5.0 clients on the same broker (docs/MQTT.md).",
    ),
];

/// Every key, in file order.
pub(crate) const KEYS: &[KeyDoc] = &[
    KeyDoc { path: "listen", doc: "UDP address to listen on (port 0: any free port)." },
    KeyDoc { path: "certs.dir", doc: "Certificate directory holding ca.crt, server.crt and server.key." },
    KeyDoc { path: "certs.ca", doc: "CA certificate file (PEM) client certificates must chain to; empty: dir/ca.crt." },
    KeyDoc { path: "certs.cert", doc: "Server certificate chain (PEM); empty: dir/server.crt." },
    KeyDoc { path: "certs.key", doc: "Server private key (PEM, PKCS#8); empty: dir/server.key." },
    KeyDoc { path: "certs.crl", doc: "Certificate revocation lists (PEM), used whenever the file exists and reloaded on SIGHUP or change; empty: dir/crl.pem." },
    KeyDoc { path: "certs.reset_key", doc: "The QUIC stateless reset key (64 hex digits), created with mode 0600 when missing, so a restarted broker resets its previous connections and their clients reconnect at once; empty: dir/stateless-reset.key." },
    KeyDoc { path: "certs.generate_dev", doc: "Create a development CA and certificates in dir when it has none (only when ca, cert and key are empty). Turn off in production." },
    KeyDoc { path: "certs.require_crl", doc: "Refuse to start when the CRL file is missing. Whatever this says, once a CRL has been in force a missing or unreadable CRL file keeps the last good CRL (logged at error level, shown in /varz)." },
    KeyDoc { path: "limits.max_payload_bytes", doc: "Largest publish payload; larger publishes are refused with PAYLOAD_TOO_LARGE. Must leave room for headers below max_frame_bytes." },
    KeyDoc { path: "limits.max_frame_bytes", doc: "Largest frame body; a larger declared length closes the connection before any allocation. Bounds one stream's read buffer. With cluster `members`, at most 32 MiB (messages travel in Raft entries)." },
    KeyDoc { path: "limits.max_subscriptions_per_session", doc: "Most subscriptions one session may hold." },
    KeyDoc { path: "limits.max_subscriptions_per_identity", doc: "Most subscriptions one certificate identity may hold over all its sessions (MQTT clients' too); one more is refused with TOO_MANY_SUBSCRIPTIONS." },
    KeyDoc { path: "limits.max_topic_bytes", doc: "Longest topic name or filter, in bytes." },
    KeyDoc { path: "limits.max_topic_depth", doc: "Most dot-separated tokens in a topic name or filter." },
    KeyDoc { path: "limits.max_connections", doc: "Most simultaneous connections; further ones are closed with TOO_MANY_CONNECTIONS." },
    KeyDoc { path: "limits.max_publish_streams_per_connection", doc: "Most publish streams one connection may have open; each holds a read buffer of up to one frame." },
    KeyDoc { path: "limits.hello_timeout_ms", doc: "How long a new connection has to open its control stream and send Hello, in milliseconds." },
    KeyDoc { path: "limits.max_retained_topics", doc: "Most topics with a retained value; memory is up to this many retained payloads." },
    KeyDoc { path: "limits.max_queue_group_bytes", doc: "Longest queue group name, in bytes." },
    KeyDoc { path: "limits.max_connections_per_identity", doc: "Most simultaneous connections of one certificate identity; further ones are closed with TOO_MANY_CONNECTIONS_FOR_IDENTITY." },
    KeyDoc { path: "limits.max_retained_topics_per_identity", doc: "Most topics whose retained value one certificate identity set; a retained publish to a further topic is refused with RETAINED_QUOTA_EXCEEDED. Clearing a value (empty payload) frees it." },
    KeyDoc { path: "limits.max_retained_bytes_per_identity", doc: "Most bytes of retained values (payload, topic and headers) one identity set; a retained publish beyond it is refused with RETAINED_QUOTA_EXCEEDED." },
    KeyDoc { path: "limits.max_retained_bytes", doc: "Most bytes of retained values of all identities together; a retained publish beyond it is refused with RETAINED_STORE_FULL." },
    KeyDoc { path: "limits.max_sessions_per_identity", doc: "Most sessions (attached or detached) of one identity; a new session beyond it ends that identity's longest-detached session, or is refused with TOO_MANY_SESSIONS_FOR_IDENTITY if none is detached. With cluster `members`, also the most claimed sessions of one identity in use across the cluster: a claim beyond it is refused with TOO_MANY_SESSIONS_FOR_IDENTITY (see CLUSTERING.md)." },
    KeyDoc { path: "limits.max_dedupe_entries_per_identity", doc: "Most acknowledged publishes of one identity the dedupe window remembers; beyond it the identity's own oldest is forgotten, never another identity's (dedupe.max_entries bounds all together)." },
    KeyDoc { path: "limits.max_pending_bytes_per_session", doc: "Most message bytes (payload, topic, headers, reply_to and per-message overhead) all of one session's subscription queues may hold together (by their byte bounds); a subscription beyond it is refused with PENDING_BYTES_LIMIT." },
    KeyDoc { path: "limits.max_headers", doc: "Most headers one publish may carry (at most 16384); more is refused with TOO_MANY_HEADERS. Announced in Welcome." },
    KeyDoc { path: "limits.max_header_bytes", doc: "Most bytes of header keys and values together in one publish; more is refused with HEADERS_TOO_LARGE. Announced in Welcome." },
    KeyDoc { path: "limits.max_memory_bytes", doc: "Broker-wide memory budget: what accepted messages (queued, in flight, retained, each counted once), the queue entries holding them (40 bytes in each queue a message waits in) and frame buffers may hold together. A publish past it is refused with MEMORY_BUDGET_EXCEEDED, as is a subscribe while it has no room for one frame of max_frame_bytes; frame buffers are refused only once they alone would fill it." },
    KeyDoc { path: "limits.max_partial_frame_bytes_per_identity", doc: "Most bytes the stream readers of all connections of one identity may hold in partially received frames; a connection going past it is closed with PARTIAL_FRAMES_LIMIT." },
    KeyDoc { path: "limits.max_tracked_topics", doc: "Most topics whose traffic (messages and bytes) /topicz counts one by one; further topics are counted together as untracked until a topic idle for a minute is forgotten." },
    KeyDoc { path: "queue.default_messages", doc: "Messages a subscription queues when it asks for no bound of its own." },
    KeyDoc { path: "queue.default_bytes", doc: "Message bytes (payload, topic, headers, reply_to, overhead) a subscription queues when it asks for no bound of its own." },
    KeyDoc { path: "queue.max_messages", doc: "The most messages any subscription may ask to queue." },
    KeyDoc { path: "queue.max_bytes", doc: "The most message bytes any subscription may ask to queue; memory per stalled subscription is at most this plus one message." },
    KeyDoc { path: "queue.default_max_in_flight", doc: "In-flight window of an at-least-once subscription that asks for none: most messages sent and not yet acknowledged." },
    KeyDoc { path: "queue.max_in_flight", doc: "The largest in-flight window any at-least-once subscription may ask for." },
    KeyDoc { path: "queue.default_ack_timeout_ms", doc: "How long an at-least-once delivery may stay unacknowledged on a live connection before it is sent again, in milliseconds, when the subscription asks for no timeout." },
    KeyDoc { path: "queue.min_ack_timeout_ms", doc: "The shortest ack timeout a subscription may ask for, in milliseconds; shorter requests are raised to it." },
    KeyDoc { path: "queue.max_backlog_age_secs", doc: "Drop a message that waited this many seconds unsent in a subscription's queue (announced as an Overflow gap); 0: no age bound. Sent, unacknowledged messages are never dropped." },
    KeyDoc { path: "sessions.expiry_secs", doc: "How long a session outlives a connection that dropped without a goodbye, in seconds; its subscriptions keep queueing meanwhile. An MQTT 5 client may ask for less (its Session Expiry Interval; more is capped to this)." },
    KeyDoc { path: "events.stats_interval_secs", doc: "How often the stats system event is published, in seconds (0: never)." },
    KeyDoc { path: "events.queue", doc: "Most system events waiting to be published; an event finding the queue full is dropped and counted (events_dropped)." },
    KeyDoc { path: "dedupe.max_entries", doc: "Most remembered (identity, message id) pairs; about 100 bytes each." },
    KeyDoc { path: "dedupe.max_age_secs", doc: "How long an acknowledged publish is remembered, in seconds." },
    KeyDoc { path: "shutdown.reconnect_hint_ms", doc: "Reconnect hint sent to every client in GoingAway, in milliseconds; spreads a restart's reconnects out." },
    KeyDoc { path: "shutdown.drain_ms", doc: "How long a shutdown waits, in milliseconds, for each connection to deliver what its subscriptions hold (and, at least once, have it acknowledged) after GoingAway, before closing it and stopping." },
    KeyDoc { path: "quic.idle_timeout_secs", doc: "Close a connection after this many seconds without a packet from the client (0: never; dead peers are then never noticed)." },
    KeyDoc { path: "quic.keep_alive_interval_secs", doc: "Send a keep-alive after this many quiet seconds (0: never); keep it well under idle_timeout_secs." },
    KeyDoc { path: "quic.max_concurrent_uni_streams", doc: "Unidirectional streams the peer may have open at once." },
    KeyDoc { path: "quic.max_concurrent_bidi_streams", doc: "Bidirectional streams the peer may have open at once (control and publish streams)." },
    KeyDoc { path: "quic.initial_concurrent_bidi_streams", doc: "Bidirectional streams a client may open before it has opened any (at least 1, at most max_concurrent_bidi_streams); doubled, up to max_concurrent_bidi_streams, each time the broker has accepted half of it. Each allowed stream costs quinn bookkeeping per connection from the start." },
    KeyDoc { path: "quic.receive_window_bytes", doc: "Most bytes a client may send on one connection ahead of what the broker has read (QUIC's connection flow-control window); bounds what QUIC buffers when readers fall behind, and limits one connection to this much per round trip." },
    KeyDoc { path: "quic.max_udp_payload_bytes", doc: "Largest UDP payload the broker sends and accepts, 1200 to 6500. Connections start at 1200 bytes and QUIC's path MTU discovery probes up to this, keeping what the path carries (about 1452 on Ethernet, all of it on loopback or jumbo frames); larger packets carry more messages each. Above 6500, quinn's batched sends exceed what the kernel takes in one call." },
    KeyDoc { path: "quic.socket_buffer_bytes", doc: "Requested UDP receive and send buffer size; the kernel may grant less (net.core.rmem_max / wmem_max), the log says what it granted." },
    KeyDoc { path: "quic.datagrams", doc: "Offer QUIC datagrams (RFC 9221), needed by datagram subscriptions and datagram publishes; off: those are refused with DATAGRAMS_UNSUPPORTED." },
    KeyDoc { path: "quic.congestion", doc: "Congestion controller of the broker's connections: \"cubic\" (loss-based) or \"bbr\" (model-based: does not read random loss as congestion; quinn marks it experimental; docs/BENCHMARKS.md)." },
    KeyDoc { path: "quic.max_ack_delay_ms", doc: "The longest a client should wait before acknowledging a packet, asked of it with QUIC's ACK frequency extension (0: ask nothing; the client then waits up to 25 ms). Keeps lossy links moving; docs/BENCHMARKS.md." },
    KeyDoc { path: "quic.handshake_timeout_ms", doc: "How long a client has to complete the TLS handshake, in milliseconds." },
    KeyDoc { path: "monitor.enabled", doc: "Serve the monitoring endpoint (plain HTTP: keep it on loopback or a private network; set token_file to require a token)." },
    KeyDoc { path: "monitor.listen", doc: "TCP address of the monitoring endpoint; a non-loopback address without token_file is warned about at start." },
    KeyDoc { path: "monitor.token_file", doc: "File holding a bearer token: every endpoint but the status page (/), /healthz and /readyz then requires \"Authorization: Bearer TOKEN\" (401 otherwise). Empty: no token; session ids are then redacted in /connz and /subz." },
    KeyDoc { path: "log.level", doc: "RUST_LOG-style filter, e.g. \"info\" or \"info,cassini_broker=debug\"; the Raft engine's own logs (openraft) stay at warn unless the filter names openraft." },
    KeyDoc { path: "log.format", doc: "\"pretty\" for people, \"json\" for one JSON object per line." },
    KeyDoc { path: "security.acl_file", doc: "ACL file (TOML, see docs/SECURITY.md) saying which identity may publish and subscribe where; reloaded on SIGHUP and when it changes. Empty: every authenticated client may use every non-system topic, but read only its own reply inboxes." },
    KeyDoc { path: "security.identity_rule", doc: "Which certificate name is a client's identity: \"default\" (URI SAN, else DNS SAN, else CN), \"uri:PREFIX\", \"dns\" or \"cn\"." },
    KeyDoc { path: "security.address_validation", doc: "When new clients must prove their address with a QUIC Retry: \"never\", \"under-load\" (256 or more handshakes in progress) or \"always\"." },
    KeyDoc { path: "security.allow_unknown_revocation", doc: "With a CRL present, accept clients whose revocation status no CRL covers (default: refuse them; revocation fails closed)." },
    KeyDoc { path: "security.enforce_crl_expiry", doc: "Refuse every client once the CRL's next-update time has passed." },
    KeyDoc { path: "storage.mode", doc: "\"memory\" (everything ends with the process) or \"disk\" (sessions, subscriptions, at-least-once backlogs, retained values and the dedupe window survive a crash; docs/DURABILITY.md)." },
    KeyDoc { path: "storage.data_dir", doc: "The directory of the disk store (cassini.redb); created if missing." },
    KeyDoc { path: "storage.sync", doc: "When an acknowledged publish is confirmed in disk mode: \"always\" after it is on stable storage (fsync, shared by concurrent publishes), \"relaxed\" as soon as it is routed." },
    KeyDoc { path: "storage.max_bytes", doc: "The most bytes of stored records in disk mode; a publish that would store more is refused with STORAGE_FULL." },
    KeyDoc { path: "cluster.name", doc: "The cluster's name, the same on every node; empty: no cluster (a standalone broker, no cluster listener)." },
    KeyDoc { path: "cluster.node", doc: "This node's name, unique in the cluster; its certificate and key are node-NAME.crt and node-NAME.key in certs.dir (cassini certs issue --node NAME)." },
    KeyDoc { path: "cluster.listen", doc: "The cluster address (UDP, ALPN cassini-cluster/1, node certificates only; port 0: any free port, logged as `cluster listening addr=`); not the client address." },
    KeyDoc { path: "cluster.peers", doc: "The cluster addresses of the nodes, this node's own may be among them; every node dials every other (full mesh), and dials back any node that dials it, so a node may list only some of the others. In the environment: comma-separated." },
    KeyDoc { path: "cluster.advertise", doc: "This node's client address as clients should dial it (host:port), told to the peers and listed in every client's Welcome so clients can fail over; empty: the bound client address, none if that is a wildcard (0.0.0.0, ::)." },
    KeyDoc { path: "cluster.members", doc: "The node names of the cluster's voting members (this node's included) for replicated session ownership through Raft: a named session is claimed through the majority before it attaches, and the old node's connection is closed; empty: no Raft. The same list on every node. The group is made with this list; once it exists, its voters change with `cassini cluster add` and `remove` (a node added later lists the voters and itself). In the environment: comma-separated." },
    KeyDoc { path: "cluster.max_queued_messages", doc: "Messages waiting for one peer's connection; beyond it, forwards to that peer are dropped (never slowing a publisher) and announced to its subscribers as gaps." },
    KeyDoc { path: "mqtt.listen", doc: "TCP address of the MQTT gateway (TLS with client certificates from the same CA, the same identity rule, ACL and limits; port 0: any free port). Empty: no gateway." },
    KeyDoc { path: "mqtt.allow_plaintext_loopback", doc: "Also accept plain TCP (no TLS) on the gateway, for local tools; only with a loopback mqtt.listen. Plaintext clients all have the identity mqtt-loopback." },
    KeyDoc { path: "mqtt.max_connecting", doc: "The most gateway connections that have not sent their CONNECT yet (TLS handshake included), each of which may hold a read buffer of up to a packet until the 10 s CONNECT deadline; a connection accepted beyond is closed at once." },
    KeyDoc { path: "mqtt.tls12", doc: "Accept TLS 1.2 clients on the gateway as well as TLS 1.3 ones (many MQTT devices speak only TLS 1.2), with the same certificates, verifier and revocation; false: TLS 1.3 only. The QUIC endpoint is TLS 1.3 whatever this says." },
];

/// The environment variable that overrides `path`.
pub(crate) fn env_name(path: &str) -> String {
    format!("CASSINI_{}", path.replace('.', "_").to_uppercase())
}

/// The default value of `path`, as TOML.
pub(crate) fn default_value(path: &str) -> Option<toml::Value> {
    let defaults = toml::Value::try_from(Settings::default()).ok()?;
    path.split('.')
        .try_fold(&defaults, |value, part| value.get(part))
        .cloned()
}

/// The defaults as a TOML file with every key documented.
pub(crate) fn default_file() -> String {
    let mut out = String::from(
        "# Cassini broker configuration: `cassini serve --config FILE`.\n\
         # Every key is optional; the values below are the defaults.\n\
         # Precedence: defaults < this file < CASSINI_* environment variables < command-line flags.\n\
         # Each key's variable is CASSINI_ and its path in capitals, e.g. CASSINI_LIMITS_MAX_CONNECTIONS.\n",
    );
    for (section, about) in SECTIONS {
        out.push('\n');
        if !section.is_empty() {
            let _ = writeln!(out, "[{section}]");
        }
        let _ = writeln!(out, "# {about}");
        for key in KEYS.iter().filter(|key| section_of(key.path) == *section) {
            let name = key.path.rsplit('.').next().unwrap_or(key.path);
            let value = default_value(key.path)
                .map(|value| value.to_string())
                .unwrap_or_default();
            let _ = writeln!(out, "\n# {}\n{name} = {value}", key.doc);
        }
    }
    out
}

/// The table a dotted path lives in (`""` for the top level).
pub(crate) fn section_of(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(section, _)| section)
}
