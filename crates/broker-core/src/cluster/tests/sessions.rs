//! The session table and the client addresses as the cluster state keeps them: what a link
//! carries, where a direct message goes, what `Welcome` lists.

use cassini_protocol::SessionId;

use super::*;

fn held(session: u8, filter: &str) -> SessionInterest {
    SessionInterest {
        session: SessionId([session; 16]),
        filter: filter.into(),
        count: 1,
    }
}

/// Peer `name` of `node`, in routing, holding `sessions`; and the link towards it.
fn peer_holding(
    node: &Arc<Cluster>,
    name: &str,
    sessions: Vec<SessionInterest>,
) -> (InboundLink, OutboundLink) {
    let inbound = node.open_inbound(name);
    let outbound = node.open_outbound(name);
    inbound.apply(InterestUpdate::Snapshot {
        seq: 1,
        entries: vec![],
        sessions,
    });
    (inbound, outbound)
}

#[tokio::test]
async fn a_link_carries_the_session_table_in_its_snapshot_then_as_numbered_changes() {
    let node = cluster("a");
    node.local_session_changed(SessionId([1; 16]), &filter("note.>"), 1);
    let mut link = node.open_outbound("b");
    node.local_session_changed(SessionId([1; 16]), &filter("note.>"), 1);
    node.local_session_changed(SessionId([1; 16]), &filter("note.>"), 0);
    let Outgoing::Interest(InterestUpdate::Snapshot { seq, sessions, .. }) = next(&mut link).await
    else {
        panic!("no snapshot first");
    };
    assert_eq!((seq, sessions), (1, vec![held(1, "note.>")]));
    let Outgoing::Interest(InterestUpdate::Session { seq, entry }) = next(&mut link).await else {
        panic!("no change");
    };
    assert_eq!(
        (seq, entry),
        (
            2,
            SessionInterest {
                count: 0,
                ..held(1, "note.>")
            }
        ),
        "an unchanged count is not sent again"
    );
}

#[tokio::test]
async fn a_direct_message_goes_only_to_the_peer_holding_its_session_with_a_matching_filter() {
    let node = cluster("a");
    let (b_in, mut b_out) = peer_holding(&node, "b", vec![held(1, "note.>")]);
    let (_c_in, _c_out) = peer_holding(&node, "c", vec![held(2, "note.>")]);
    assert_eq!(
        node.forward_direct(&message("note.x"), SessionId([1; 16]), None),
        1
    );
    assert_eq!(
        node.forward_direct(&message("other.x"), SessionId([1; 16]), None),
        0,
        "no filter of the session matches"
    );
    assert_eq!(
        node.forward_direct(&message("note.x"), SessionId([9; 16]), None),
        0,
        "no node holds the session"
    );
    let _snapshot = next(&mut b_out).await;
    let Outgoing::Message(forward) = next(&mut b_out).await else {
        panic!("no forward");
    };
    assert_eq!(forward.session, Some(SessionId([1; 16])));
    assert!(forward.groups.is_empty());
    let forwarded: Vec<u64> = node.peers().iter().map(|peer| peer.forwarded).collect();
    assert_eq!(forwarded, vec![1, 0], "c never saw it");

    drop(b_in);
    assert_eq!(
        node.forward_direct(&message("note.x"), SessionId([1; 16]), None),
        1,
        "out of routing: dropped, and announced when it is back"
    );
    assert_eq!(node.peers()[0].dropped, 1);
}

#[test]
fn welcome_lists_this_node_first_then_the_peers_in_routing_by_name() {
    let node = cluster("b");
    node.set_client_address("10.0.0.2:7700");
    node.set_peer_client_address("c", Some("10.0.0.3:7700".into()));
    node.set_peer_client_address("a", Some("10.0.0.1:7700".into()));
    node.set_peer_client_address("d", Some("10.0.0.4:7700".into()));
    let _a = node.open_inbound("a");
    let _c = node.open_inbound("c");
    drop(node.open_inbound("d"));
    assert_eq!(
        node.client_addresses(),
        vec!["10.0.0.2:7700", "10.0.0.1:7700", "10.0.0.3:7700"],
        "d is out of routing"
    );
}
