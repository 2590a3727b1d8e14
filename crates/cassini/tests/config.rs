//! `cassini serve --config`, `cassini config check|default` and `cassini completions`, run as
//! a user runs them.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use harness::{cassini, init_certs, run, Serve};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// A directory of certificates from `cassini certs init`, for a `config check` that loads the
/// certificates its file names.
fn dev_certs() -> tempfile::TempDir {
    let certs = tempfile::tempdir().expect("tempdir");
    init_certs(certs.path(), &[]);
    certs
}

/// `cassini config check PATH`, finding its certificates in `certs` (`CASSINI_CERTS_DIR`),
/// passes.
fn assert_config_check_passes(path: &Path, certs: &Path) {
    let check =
        run(cassini(&["config", "check", path.to_str().unwrap()]).env("CASSINI_CERTS_DIR", certs));
    assert!(
        check.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn config_default_prints_a_file_that_config_check_accepts() {
    let output = run(&mut cassini(&["config", "default"]));
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(text.contains("[limits]") && text.contains("# "), "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cassini.toml");
    std::fs::write(&path, &text).expect("write");
    // In an empty directory, as on a fresh machine: `serve` would create development
    // certificates in `certs`, so their absence is not an error.
    let check = run(cassini(&["config", "check", path.to_str().unwrap()]).current_dir(dir.path()));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).ends_with(": ok\n"));
}

#[test]
fn the_deploy_example_passes_config_check() {
    let path = deploy_dir().join("cassini.toml");
    // `config check` loads the certificates the file names: give it real ones where the
    // server would have them.
    let certs = dev_certs();
    assert_config_check_passes(&path, certs.path());
    let unit = std::fs::read_to_string(deploy_dir().join("cassini.service")).expect("unit");
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ReadWritePaths=/var/lib/cassini",
        "ExecStart=/usr/local/bin/cassini serve --config /etc/cassini/cassini.toml",
    ] {
        assert!(unit.contains(line), "the unit has {line:?}");
    }
}

#[test]
fn the_cluster_node_configurations_in_deploy_pass_config_check() {
    let certs = dev_certs();
    for node in ["n1", "n2", "n3"] {
        let path = deploy_dir().join("cluster").join(format!("{node}.toml"));
        assert_config_check_passes(&path, certs.path());
    }
    let unit = std::fs::read_to_string(deploy_dir().join("cassini@.service")).expect("unit");
    for line in [
        "ExecStart=/usr/local/bin/cassini serve --config /etc/cassini/%i.toml",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/cassini/%i",
    ] {
        assert!(unit.contains(line), "the template unit has {line:?}");
    }
}

#[test]
fn a_bad_file_is_refused_with_the_key_the_line_and_what_was_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7700\"\n[limits]\nmax_connections = \"many\"\n",
    )
    .expect("write");
    let path = path.to_str().unwrap();
    for args in [
        vec!["config", "check", path],
        vec!["serve", "--config", path],
    ] {
        let output = run(&mut cassini(&args));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains("max_connections"), "{stderr}");
        assert!(stderr.contains("line 3"), "{stderr}");
        assert!(stderr.contains("expected usize"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    std::fs::write(dir.path().join("tape.toml"), "[storage]\nmode = \"tape\"\n").expect("write");
    let tape = dir.path().join("tape.toml");
    let output = run(&mut cassini(&["config", "check", tape.to_str().unwrap()]));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tape"), "{stderr}");
    assert!(
        stderr.contains("memory") && stderr.contains("disk"),
        "{stderr}"
    );

    let missing = run(&mut cassini(&[
        "config",
        "check",
        "/nonexistent/cassini.toml",
    ]));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/cassini.toml"));
}

/// Starts `serve` with `file`, extra environment and flags (and no `--listen` of the harness's
/// own); returns the address it listens on.
fn listening_addr(
    file: &Path,
    certs: &Path,
    env: &[(&str, String)],
    flags: &[String],
) -> SocketAddr {
    let mut serve = Serve::new(&["--config", file.to_str().unwrap()])
        .listen(None)
        .env("CASSINI_CERTS_DIR", certs);
    for flag in flags {
        serve = serve.arg(flag);
    }
    for (name, value) in env {
        serve = serve.env(name, value);
    }
    let mut broker = serve.start();
    assert!(broker.terminate().success());
    broker.addr()
}

#[test]
fn serve_takes_the_file_then_the_environment_then_the_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    // Three loopback addresses, each on port 0: the address it listens on names the source
    // that won.
    let (from_file, from_env, from_flag) = ("127.0.0.1", "127.0.0.2", "127.0.0.3");
    let file = dir.path().join("cassini.toml");
    std::fs::write(
        &file,
        format!("listen = \"{from_file}:0\"\n[shutdown]\ndrain_ms = 500\n"),
    )
    .expect("write");

    let ip = |addr: SocketAddr| addr.ip().to_string();
    assert_eq!(ip(listening_addr(&file, &certs, &[], &[])), from_file);
    let env = [("CASSINI_LISTEN", format!("{from_env}:0"))];
    assert_eq!(ip(listening_addr(&file, &certs, &env, &[])), from_env);
    let flags = ["--listen".to_string(), format!("{from_flag}:0")];
    assert_eq!(ip(listening_addr(&file, &certs, &env, &flags)), from_flag);
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&mut cassini(&["completions", shell]));
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        for word in ["cassini", "serve", "completions", "session-expiry"] {
            assert!(script.contains(word), "{shell} completion names {word}");
        }
    }
    let unknown = run(&mut cassini(&["completions", "tcsh"]));
    assert!(!unknown.status.success());
}

#[test]
fn config_check_loads_the_acl_and_certificate_files_the_configuration_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let init = run(&mut cassini(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
    ]));
    assert!(init.status.success());
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "default = \"deny\"\n[[rule]]\nidentity = \"dev\"\npublish = [\"a.>.b\"]\n",
    )
    .expect("write acl");
    let file = dir.path().join("cassini.toml");
    let write_config = |acl_line: &str| {
        std::fs::write(
            &file,
            format!(
                "[certs]\ndir = {:?}\ngenerate_dev = false\n[security]\n{acl_line}\n",
                certs.to_str().unwrap()
            ),
        )
        .expect("write config")
    };
    let check = || run(&mut cassini(&["config", "check", file.to_str().unwrap()]));

    write_config(&format!("acl_file = {:?}", acl.to_str().unwrap()));
    let refused = check();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "a bad ACL fails: {stderr}");
    assert!(
        stderr.contains("acl.toml") && stderr.contains("invalid topic pattern"),
        "names the file and the fault: {stderr}"
    );

    std::fs::write(&acl, "default = \"deny\"\n").expect("fix acl");
    let passed = check();
    assert!(
        passed.status.success(),
        "{}",
        String::from_utf8_lossy(&passed.stderr)
    );

    std::fs::remove_file(certs.join("server.key")).expect("remove the key");
    let refused = check();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a missing key fails: {stderr}"
    );
    assert!(stderr.contains("server.key"), "names the file: {stderr}");
}

#[test]
fn config_check_refuses_a_required_crl_missing_from_an_empty_development_directory() {
    // `serve` writes development certificates into an empty directory, never a CRL: with
    // `certs.require_crl` it would not start, so the check fails too.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cassini.toml");
    std::fs::write(
        &file,
        format!(
            "[certs]\ndir = {:?}\nrequire_crl = true\n",
            dir.path().join("empty").to_str().unwrap()
        ),
    )
    .expect("write config");
    let refused = run(&mut cassini(&["config", "check", file.to_str().unwrap()]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "refused: {stderr}");
    assert!(
        stderr.contains("crl.pem") && stderr.contains("require_crl"),
        "names the file and the setting: {stderr}"
    );
}
