//! Layering, defaults and error messages of the configuration.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;

use super::keys::{env_name, KEYS, SECTIONS};
use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn leaf_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(value, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn every_key_is_documented_once_and_no_other() {
    let mut actual = BTreeSet::new();
    leaf_paths(
        &toml::Value::try_from(Settings::default()).unwrap(),
        "",
        &mut actual,
    );
    let documented: BTreeSet<String> = KEYS.iter().map(|key| key.path.to_string()).collect();
    assert_eq!(documented.len(), KEYS.len(), "a key is documented twice");
    assert_eq!(actual, documented);
    let names: BTreeSet<String> = KEYS.iter().map(|key| env_name(key.path)).collect();
    assert_eq!(names.len(), KEYS.len(), "two keys share a variable");
    for key in KEYS {
        assert!(
            SECTIONS
                .iter()
                .any(|(section, _)| *section == keys::section_of(key.path)),
            "{} is in no section",
            key.path
        );
    }
}

#[test]
fn default_file_parses_back_to_the_defaults() {
    let text = default_file();
    let parsed: Settings = toml::from_str(&text).unwrap();
    assert_eq!(parsed, Settings::default());
    for key in KEYS {
        assert!(text.contains(key.doc), "{} has no comment", key.path);
    }
    let written = file(&text);
    let resolved = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    assert_eq!(resolved, Settings::default());
}

#[test]
fn defaults_match_the_broker_and_the_old_flags() {
    let settings = Settings::default();
    assert_eq!(settings.listen.to_string(), "127.0.0.1:7700");
    assert_eq!(settings.certs.dir, std::path::PathBuf::from("certs"));
    assert_eq!(settings.sessions.expiry_secs, 300);
    assert_eq!(settings.quic.idle_timeout_secs, 30);
    let broker = settings.broker_config();
    let core = BrokerConfig::default();
    assert_eq!(broker.limits.max_frame_bytes, core.limits.max_frame_bytes);
    assert_eq!(broker.limits.hello_timeout, core.limits.hello_timeout);
    assert_eq!(broker.queue.max_bytes, core.queue.max_bytes);
    assert_eq!(broker.shutdown.drain, core.shutdown.drain);
    assert_eq!(broker.dedupe.max_age, core.dedupe.max_age);
}

#[test]
fn per_identity_quotas_come_from_the_file_then_the_environment() {
    let written = file(
        "[limits]\n\
         max_retained_topics_per_identity = 5\n\
         max_retained_bytes_per_identity = 6\n\
         max_retained_bytes = 7\n\
         max_sessions_per_identity = 8\n\
         max_dedupe_entries_per_identity = 9\n",
    );
    let from_file = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    let limits = from_file.broker_config().limits;
    assert_eq!(limits.max_retained_topics_per_identity, 5);
    assert_eq!(limits.max_retained_bytes_per_identity, 6);
    assert_eq!(limits.max_retained_bytes, 7);
    assert_eq!(limits.max_sessions_per_identity, 8);
    assert_eq!(limits.max_dedupe_entries_per_identity, 9);

    let environment = env(&[
        ("CASSINI_LIMITS_MAX_RETAINED_TOPICS_PER_IDENTITY", "15"),
        ("CASSINI_LIMITS_MAX_RETAINED_BYTES_PER_IDENTITY", "16"),
        ("CASSINI_LIMITS_MAX_RETAINED_BYTES", "17"),
        ("CASSINI_LIMITS_MAX_SESSIONS_PER_IDENTITY", "18"),
        ("CASSINI_LIMITS_MAX_DEDUPE_ENTRIES_PER_IDENTITY", "19"),
    ]);
    let from_env = resolve(Some(written.path()), &environment, &Overrides::default()).unwrap();
    let limits = from_env.broker_config().limits;
    assert_eq!(limits.max_retained_topics_per_identity, 15);
    assert_eq!(limits.max_retained_bytes_per_identity, 16);
    assert_eq!(limits.max_retained_bytes, 17);
    assert_eq!(limits.max_sessions_per_identity, 18);
    assert_eq!(limits.max_dedupe_entries_per_identity, 19);

    let defaults = Settings::default().broker_config().limits;
    let core = BrokerLimits::default();
    assert_eq!(defaults.max_retained_bytes, core.max_retained_bytes);
    assert_eq!(
        defaults.max_sessions_per_identity,
        core.max_sessions_per_identity
    );
    assert_eq!(
        defaults.max_dedupe_entries_per_identity,
        core.max_dedupe_entries_per_identity
    );
}

#[test]
fn file_then_environment_then_flags() {
    let written = file(
        "listen = \"127.0.0.1:1000\"\n\
         [sessions]\nexpiry_secs = 10\n\
         [quic]\nidle_timeout_secs = 11\n\
         [limits]\nmax_connections = 12\n",
    );
    let from_file = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    assert_eq!(from_file.listen.port(), 1000);
    assert_eq!(from_file.sessions.expiry_secs, 10);
    assert_eq!(from_file.limits.max_connections, 12);
    assert_eq!(from_file.queue, QueueSettings::default());

    let environment = env(&[
        ("CASSINI_SESSIONS_EXPIRY_SECS", "20"),
        ("CASSINI_LIMITS_MAX_CONNECTIONS", "22"),
        ("CASSINI_LISTEN", "127.0.0.1:2000"),
        ("CASSINI_MONITOR_ENABLED", "true"),
    ]);
    let from_env = resolve(Some(written.path()), &environment, &Overrides::default()).unwrap();
    assert_eq!(from_env.listen.port(), 2000);
    assert_eq!(from_env.sessions.expiry_secs, 20);
    assert_eq!(from_env.limits.max_connections, 22);
    assert_eq!(from_env.quic.idle_timeout_secs, 11, "the file still counts");
    assert!(from_env.monitor.enabled);

    let flags = Overrides {
        listen: Some("127.0.0.1:3000".parse().unwrap()),
        session_expiry: Some(30),
        monitor: Some("127.0.0.1:9000".parse().unwrap()),
        ..Overrides::default()
    };
    let from_flags = resolve(Some(written.path()), &environment, &flags).unwrap();
    assert_eq!(from_flags.listen.port(), 3000);
    assert_eq!(from_flags.sessions.expiry_secs, 30);
    assert_eq!(
        from_flags.limits.max_connections, 22,
        "the environment still counts"
    );
    assert_eq!(from_flags.monitor.listen.port(), 9000);
}

#[test]
fn rust_log_sets_the_level_below_cassini_log_level() {
    let rust_log = env(&[("RUST_LOG", "debug")]);
    assert_eq!(
        resolve(None, &rust_log, &Overrides::default())
            .unwrap()
            .log
            .level,
        "debug"
    );
    let both = env(&[("RUST_LOG", "debug"), ("CASSINI_LOG_LEVEL", "warn")]);
    assert_eq!(
        resolve(None, &both, &Overrides::default())
            .unwrap()
            .log
            .level,
        "warn"
    );
}

fn error_of(text: &str) -> String {
    let written = file(text);
    resolve(Some(written.path()), &[], &Overrides::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_key_is_named_with_its_line_and_the_expected_keys() {
    let message = error_of("[limits]\nmax_connections = 5\nmax_conections = 5\n");
    assert!(message.contains("max_conections"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("expected one of"), "{message}");
    assert!(message.contains("`max_connections`"), "{message}");
}

#[test]
fn wrong_type_is_named_with_its_line_and_the_expected_type() {
    let message =
        error_of("listen = \"127.0.0.1:7700\"\n\n[quic]\nidle_timeout_secs = \"thirty\"\n");
    assert!(message.contains("idle_timeout_secs"), "{message}");
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains("expected u64"), "{message}");
}

#[test]
fn disk_storage_comes_from_the_file_and_a_bad_mode_is_named() {
    let written =
        file("[storage]\nmode = \"disk\"\ndata_dir = \"/var/lib/cassini\"\nsync = \"relaxed\"\n");
    let settings = resolve(Some(written.path()), &[], &Overrides::default()).expect("valid");
    let storage = settings.broker_config().storage;
    assert_eq!(storage.mode, cassini_broker::config::StorageMode::Disk);
    assert_eq!(
        storage.data_dir,
        std::path::PathBuf::from("/var/lib/cassini")
    );
    assert_eq!(storage.sync, cassini_broker::config::SyncPolicy::Relaxed);
    let unknown = error_of("[storage]\nmode = \"tape\"\n");
    assert!(unknown.contains("unknown variant `tape`"), "{unknown}");
}

#[test]
fn a_frame_limit_too_large_for_the_raft_log_is_refused_with_members() {
    let large = "[limits]\nmax_frame_bytes = 40000000\n";
    let standalone = file(large);
    resolve(Some(standalone.path()), &[], &Overrides::default())
        .expect("without members, any frame limit the codec takes");
    let message = error_of(&format!(
        "{large}\n[cluster]\nname = \"prod\"\nnode = \"n1\"\nmembers = [\"n1\", \"n2\"]\n"
    ));
    assert!(message.contains("limits.max_frame_bytes"), "{message}");
    assert!(message.contains("cluster.members"), "{message}");
}

#[test]
fn a_frame_limit_that_cannot_hold_the_largest_message_the_limits_allow_is_refused() {
    // A payload just under the frame: its headers, topic and fields would not fit.
    let message = error_of("[limits]\nmax_payload_bytes = 1048576\nmax_frame_bytes = 1048577\n");
    assert!(message.contains("limits.max_frame_bytes"), "{message}");
    assert!(message.contains("max_header_bytes"), "{message}");
    let roomy = file("[limits]\nmax_payload_bytes = 1048576\nmax_header_bytes = 1024\nmax_frame_bytes = 1060000\n");
    resolve(Some(roomy.path()), &[], &Overrides::default()).expect("room for every field");
    resolve(None, &[], &Overrides::default()).expect("the defaults leave room");
}

#[test]
fn a_udp_payload_bound_outside_what_quic_and_batched_sends_take_is_refused() {
    for bad in [1_199, 6_501] {
        let message = error_of(&format!("[quic]\nmax_udp_payload_bytes = {bad}\n"));
        assert!(message.contains("quic.max_udp_payload_bytes"), "{message}");
        assert!(message.contains("1200 to 6500"), "{message}");
    }
    for good in [1_200, 1_472, 6_500] {
        let file = file(&format!("[quic]\nmax_udp_payload_bytes = {good}\n"));
        let settings = resolve(Some(file.path()), &[], &Overrides::default()).expect("in range");
        assert_eq!(
            settings.server_options().quic.max_udp_payload_bytes,
            good,
            "{good} reaches the transport"
        );
    }
}

#[test]
fn inconsistent_values_name_both_keys() {
    let message = error_of("[queue]\ndefault_messages = 10\nmax_messages = 5\n");
    assert!(message.contains("queue.default_messages"), "{message}");
    assert!(message.contains("queue.max_messages"), "{message}");
    let message = error_of("[log]\nlevel = \"info,=[\"\n");
    assert!(message.contains("log.level"), "{message}");
}

#[test]
fn bad_environment_values_name_the_variable_and_the_expected_type() {
    let bad = env(&[("CASSINI_LIMITS_MAX_CONNECTIONS", "lots")]);
    let message = resolve(None, &bad, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("CASSINI_LIMITS_MAX_CONNECTIONS"),
        "{message}"
    );
    assert!(message.contains("an integer"), "{message}");
    let negative = env(&[("CASSINI_LIMITS_MAX_CONNECTIONS", "-1")]);
    let message = resolve(None, &negative, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("CASSINI_LIMITS_MAX_CONNECTIONS"),
        "{message}"
    );
}

#[test]
fn variables_that_name_no_key_are_ignored_with_a_warning() {
    let unknown = env(&[
        ("CASSINI_LIMITS_MAX_CONECTIONS", "1"),
        ("CASSINI_SERVER", "127.0.0.1:7700"),
        ("CASSINI_LISTEN", "127.0.0.1:1234"),
    ]);
    let settings = resolve(None, &unknown, &Overrides::default()).unwrap();
    assert_eq!(settings.listen.port(), 1234);
    assert_eq!(
        settings.limits.max_connections,
        LimitSettings::default().max_connections
    );
    let warnings = unknown_env(&unknown);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("CASSINI_LIMITS_MAX_CONECTIONS"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("CASSINI_SERVER"), "{warnings:?}");
}

#[test]
fn explicit_certificate_files_replace_the_directory_names() {
    let written = file("[certs]\ndir = \"/etc/cassini\"\nkey = \"/run/keys/server.key\"\n");
    let settings = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    let files = settings.certs.files();
    assert_eq!(files.ca, std::path::PathBuf::from("/etc/cassini/ca.crt"));
    assert_eq!(files.key, std::path::PathBuf::from("/run/keys/server.key"));
    assert!(!settings.certs.uses_dir_only());
}

#[test]
fn clients_are_asked_to_acknowledge_within_a_millisecond_unless_configured_otherwise() {
    let ack_delay = |settings: Settings| settings.server_options().quic.max_ack_delay;
    let defaults = resolve(None, &[], &Overrides::default()).unwrap();
    assert_eq!(ack_delay(defaults), Duration::from_millis(1));

    let toml = file("[quic]\nmax_ack_delay_ms = 5\n");
    let from_file = resolve(Some(toml.path()), &[], &Overrides::default()).unwrap();
    assert_eq!(ack_delay(from_file), Duration::from_millis(5));

    let from_env = resolve(
        None,
        &env(&[("CASSINI_QUIC_MAX_ACK_DELAY_MS", "0")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(ack_delay(from_env), Duration::ZERO);
}

#[test]
fn the_configuration_document_lists_every_key_and_variable() {
    let doc = include_str!("../../../../docs/CONFIGURATION.md");
    for key in KEYS {
        assert!(
            doc.contains(&format!("`{}`", key.path)),
            "{} is documented",
            key.path
        );
        assert!(
            doc.contains(&env_name(key.path)),
            "{} is documented",
            env_name(key.path)
        );
    }
}

#[test]
fn a_keep_alive_longer_than_the_idle_timeout_is_a_warning_not_an_error() {
    // `serve --idle-timeout 5` worked before the configuration file existed; it still does.
    let flags = Overrides {
        idle_timeout: Some(5),
        ..Overrides::default()
    };
    let settings = resolve(None, &[], &flags).unwrap();
    assert_eq!(settings.quic.idle_timeout_secs, 5);
    let warnings = settings.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("quic.keep_alive_interval_secs"),
        "{warnings:?}"
    );
    assert!(Settings::default().warnings().is_empty());
}

#[test]
fn the_congestion_controller_is_cubic_unless_the_file_the_environment_or_the_flag_says_bbr() {
    use cassini_quic::tls::CongestionControl;
    let congestion = |settings: Settings| settings.server_options().quic.congestion;
    let defaults = resolve(None, &[], &Overrides::default()).unwrap();
    assert_eq!(congestion(defaults), CongestionControl::Cubic);

    let toml = file("[quic]\ncongestion = \"bbr\"\n");
    let from_file = resolve(Some(toml.path()), &[], &Overrides::default()).unwrap();
    assert_eq!(congestion(from_file), CongestionControl::Bbr);

    let from_env = resolve(
        None,
        &env(&[("CASSINI_QUIC_CONGESTION", "bbr")]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(congestion(from_env), CongestionControl::Bbr);

    let flag = Overrides {
        congestion: Some(Congestion::Cubic),
        ..Overrides::default()
    };
    let flag_wins = resolve(Some(toml.path()), &[], &flag).unwrap();
    assert_eq!(congestion(flag_wins), CongestionControl::Cubic);

    let wrong = file("[quic]\ncongestion = \"reno\"\n");
    let err = resolve(Some(wrong.path()), &[], &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("congestion"), "{err}");
}

#[test]
fn without_a_cluster_name_the_broker_is_standalone() {
    let settings = resolve(None, &[], &Overrides::default()).unwrap();
    assert!(!settings.cluster.enabled());
    assert!(settings.broker_config().cluster.is_none());
}

#[test]
fn the_cluster_comes_from_the_file_the_environment_and_the_flags() {
    let written = file(
        "[cluster]\nname = \"prod\"\nnode = \"n1\"\nlisten = \"127.0.0.1:7801\"\n\
         peers = [\"127.0.0.1:7801\"]\n",
    );
    let from_file = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    assert!(from_file.cluster.enabled());
    assert_eq!(from_file.cluster.peers.len(), 1);
    let config = from_file.broker_config().cluster.expect("a cluster node");
    assert_eq!(config.node, "n1");

    let environment = env(&[
        ("CASSINI_CLUSTER_NODE", "n2"),
        (
            "CASSINI_CLUSTER_PEERS",
            "127.0.0.1:7801, 127.0.0.1:7802,127.0.0.1:7803",
        ),
    ]);
    let from_env = resolve(Some(written.path()), &environment, &Overrides::default()).unwrap();
    assert_eq!(from_env.cluster.node, "n2");
    assert_eq!(from_env.cluster.peers.len(), 3);
    assert_eq!(from_env.cluster.name, "prod", "the file still counts");

    let flags = Overrides {
        cluster: Some("dev".into()),
        node: Some("n3".into()),
        cluster_listen: Some("127.0.0.1:7900".parse().unwrap()),
        peers: vec!["127.0.0.1:7900".parse().unwrap()],
        ..Overrides::default()
    };
    let from_flags = resolve(Some(written.path()), &environment, &flags).unwrap();
    assert_eq!(from_flags.cluster.name, "dev");
    assert_eq!(from_flags.cluster.node, "n3");
    assert_eq!(from_flags.cluster.listen.port(), 7900);
    assert_eq!(
        from_flags.cluster.peers.len(),
        1,
        "--peer replaces the list"
    );
}

#[test]
fn the_advertised_client_address_comes_from_the_file_the_environment_and_the_flag() {
    let bound: SocketAddr = "10.0.0.1:7700".parse().unwrap();
    let wildcard: SocketAddr = "0.0.0.0:7700".parse().unwrap();
    let written = file("[cluster]\nname = \"prod\"\nnode = \"n1\"\n");
    let default = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    assert_eq!(
        default.cluster.advertised(bound),
        Some("10.0.0.1:7700".into()),
        "default: the bound client address"
    );
    assert_eq!(
        default.cluster.advertised(wildcard),
        None,
        "a wildcard is no address to dial"
    );

    let environment = env(&[("CASSINI_CLUSTER_ADVERTISE", "n1.example:7700")]);
    let from_env = resolve(Some(written.path()), &environment, &Overrides::default()).unwrap();
    assert_eq!(
        from_env.cluster.advertised(wildcard),
        Some("n1.example:7700".into())
    );
    let flags = Overrides {
        cluster_advertise: Some("203.0.113.7:7700".into()),
        ..Overrides::default()
    };
    let from_flag = resolve(Some(written.path()), &environment, &flags).unwrap();
    assert_eq!(
        from_flag.cluster.advertised(bound),
        Some("203.0.113.7:7700".into())
    );

    let bad = Overrides {
        cluster_advertise: Some("no-port".into()),
        ..Overrides::default()
    };
    let message = resolve(Some(written.path()), &[], &bad)
        .unwrap_err()
        .to_string();
    assert!(message.contains("cluster.advertise"), "{message}");
}

#[test]
fn the_raft_members_come_from_the_file_the_environment_and_the_flag_and_must_name_this_node() {
    let written = file("[cluster]\nname = \"prod\"\nnode = \"n1\"\nmembers = [\"n1\", \"n2\"]\n");
    let from_file = resolve(Some(written.path()), &[], &Overrides::default()).unwrap();
    let config = from_file.broker_config().cluster.expect("a cluster node");
    assert_eq!(config.members, ["n1", "n2"]);

    let environment = env(&[("CASSINI_CLUSTER_MEMBERS", "n1, n2,n3")]);
    let from_env = resolve(Some(written.path()), &environment, &Overrides::default()).unwrap();
    assert_eq!(from_env.cluster.members, ["n1", "n2", "n3"]);

    let flags = Overrides {
        members: vec!["n1".into(), "n4".into()],
        ..Overrides::default()
    };
    let from_flags = resolve(Some(written.path()), &environment, &flags).unwrap();
    assert_eq!(
        from_flags.cluster.members,
        ["n1", "n4"],
        "--cluster-member replaces the list"
    );

    let without_this_node = Overrides {
        members: vec!["n2".into(), "n3".into()],
        ..Overrides::default()
    };
    let message = resolve(Some(written.path()), &[], &without_this_node)
        .unwrap_err()
        .to_string();
    assert!(message.contains("cluster.members"), "{message}");

    let standalone = resolve(None, &[], &Overrides::default()).unwrap();
    assert!(standalone.cluster.members.is_empty(), "no Raft by default");
}

#[test]
fn a_cluster_without_a_node_name_is_refused() {
    let flags = Overrides {
        cluster: Some("prod".into()),
        ..Overrides::default()
    };
    let message = resolve(None, &[], &flags).unwrap_err().to_string();
    assert!(message.contains("cluster.node"), "{message}");
}
