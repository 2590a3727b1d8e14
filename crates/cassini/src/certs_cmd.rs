//! `cassini certs init`, `issue`, `revoke` and `rotate-server`.

use std::process::ExitCode;

use anyhow::Context;
use cassini_quic::certs::{
    init_dir, issue_client_file, issue_node_file, revoke_client_file, revoke_node_file,
    rotate_server_file, CaStatus, InitOptions, DEV_CLIENT_NAME,
};

use crate::cli::{CertsInitArgs, CertsIssueArgs, CertsRevokeArgs, CertsRotateServerArgs};

pub(crate) fn init(args: CertsInitArgs) -> anyhow::Result<ExitCode> {
    // The default client is written when the directory has none of that name; a client named
    // on the command line is issued again.
    let clients_if_missing = if args.clients.is_empty() {
        vec![DEV_CLIENT_NAME.to_string()]
    } else {
        Vec::new()
    };
    let options = InitOptions {
        server_names: args.server_names,
        clients: args.clients,
        clients_if_missing,
        nodes: args.nodes,
        overwrite_ca: args.force_new_ca,
    };
    let report = init_dir(&args.dir, &options)
        .with_context(|| format!("initialising certificates in {}", args.dir.display()))?;
    match report.ca {
        CaStatus::Created => println!("created a new CA in {}", args.dir.display()),
        CaStatus::Reused => println!(
            "kept the existing CA in {} (use --force-new-ca to replace it)",
            args.dir.display()
        ),
    }
    for path in report.written {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn issue(args: CertsIssueArgs) -> anyhow::Result<ExitCode> {
    let files = match (&args.node, &args.name) {
        (Some(node), _) => issue_node_file(&args.dir, node)
            .with_context(|| format!("issuing a node certificate for {node:?}"))?,
        (None, Some(name)) => issue_client_file(&args.dir, name)
            .with_context(|| format!("issuing a certificate for {name:?}"))?,
        (None, None) => anyhow::bail!("name a client, or a node with --node NAME"),
    };
    println!("wrote {}", files.cert.display());
    println!("wrote {}", files.key.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn revoke(args: CertsRevokeArgs) -> anyhow::Result<ExitCode> {
    let (file, report) = match (&args.node, &args.name) {
        (Some(node), _) => (
            format!("node-{node}.crt"),
            revoke_node_file(&args.dir, node)
                .with_context(|| format!("revoking the certificate of node {node:?}"))?,
        ),
        (None, Some(name)) => (
            format!("client-{name}.crt"),
            revoke_client_file(&args.dir, name)
                .with_context(|| format!("revoking the certificate of {name:?}"))?,
        ),
        (None, None) => anyhow::bail!("name a client or a node (--node NAME) to revoke"),
    };
    if report.already_revoked {
        println!("{file} (serial {}) was already revoked", report.serial);
    } else {
        println!("revoked {file} (serial {})", report.serial);
    }
    println!(
        "wrote {} ({} revoked certificates)",
        report.crl.display(),
        report.revoked_count
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rotate_server(args: CertsRotateServerArgs) -> anyhow::Result<ExitCode> {
    let rotated = rotate_server_file(&args.dir, &args.server_names)
        .with_context(|| format!("rotating the server certificate in {}", args.dir.display()))?;
    println!("wrote {}", rotated.cert.display());
    println!("wrote {}", rotated.key.display());
    Ok(ExitCode::SUCCESS)
}
