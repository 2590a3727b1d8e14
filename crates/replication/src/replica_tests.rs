//! Three replicas over an in-memory transport: the group bootstraps once, claims get strictly
//! increasing epochs that every node applies, and a node cut off from the majority refuses
//! claims.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::network::Rpc;
use crate::{
    ClaimError, ClaimObserver, MembershipChange, MembershipError, Owner, Replica, ReplicaConfig,
    RpcTransport, SessionKey, Storage, TransportFailure,
};

/// The replicas by name, the names cut off from every other, and a split: the names on one
/// side, cut off from every name on the other (but not from each other).
#[derive(Default)]
struct Mesh {
    replicas: Mutex<HashMap<String, Arc<Replica>>>,
    cut: Mutex<HashSet<String>>,
    split: Mutex<HashSet<String>>,
    /// Names that neither get nor send anything but the writes they forward to the leader
    /// (no append entries, no votes): nodes that have not caught up with the group.
    deaf: Mutex<HashSet<String>>,
}

struct Via {
    from: String,
    mesh: Arc<Mesh>,
}

impl Via {
    fn reachable(&self, node: &str) -> Option<Arc<Replica>> {
        let cut = self.mesh.cut.lock().expect("cut");
        if cut.contains(node) || cut.contains(&self.from) {
            return None;
        }
        let split = self.mesh.split.lock().expect("split");
        if !split.is_empty() && split.contains(node) != split.contains(&self.from) {
            return None;
        }
        self.mesh
            .replicas
            .lock()
            .expect("replicas")
            .get(node)
            .cloned()
    }
}

#[async_trait::async_trait]
impl RpcTransport for Via {
    async fn call(
        &self,
        node: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportFailure> {
        let deaf = {
            let deaf = self.mesh.deaf.lock().expect("deaf");
            deaf.contains(node) || deaf.contains(&self.from)
        };
        if deaf && !matches!(rmp_serde::from_slice(&request), Ok(Rpc::Write { .. })) {
            return Err(TransportFailure::Unreachable(node.to_owned()));
        }
        let replica = self
            .reachable(node)
            .ok_or_else(|| TransportFailure::Unreachable(node.to_owned()))?;
        tokio::time::timeout(timeout, replica.handle(&request))
            .await
            .map_err(|_| TransportFailure::Failed {
                node: node.to_owned(),
                reason: "timed out".into(),
            })
    }

    fn connected(&self, node: &str) -> bool {
        self.reachable(node).is_some()
    }
}

type Seen = Arc<Mutex<Vec<(String, SessionKey, Owner)>>>;

async fn three(claim_timeout: Duration) -> (Arc<Mesh>, Vec<Arc<Replica>>, Seen) {
    three_with(claim_timeout, u64::MAX).await
}

async fn three_with(
    claim_timeout: Duration,
    snapshot_every: u64,
) -> (Arc<Mesh>, Vec<Arc<Replica>>, Seen) {
    group(&["n1", "n2", "n3"], claim_timeout, snapshot_every).await
}

async fn group(
    names: &[&str],
    claim_timeout: Duration,
    snapshot_every: u64,
) -> (Arc<Mesh>, Vec<Arc<Replica>>, Seen) {
    let mesh = Arc::new(Mesh::default());
    let seen: Seen = Arc::default();
    let members: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut replicas = Vec::new();
    for name in &members {
        replicas.push(start(&mesh, &seen, name, &members, claim_timeout, snapshot_every).await);
    }
    (mesh, replicas, seen)
}

/// Starts node `name` (configured with `members`) on an empty memory store, in `mesh`.
async fn start(
    mesh: &Arc<Mesh>,
    seen: &Seen,
    name: &str,
    members: &[String],
    claim_timeout: Duration,
    snapshot_every: u64,
) -> Arc<Replica> {
    let mut config = ReplicaConfig::new(name.to_owned(), members.to_vec());
    config.claim_timeout = claim_timeout;
    config.lease = claim_timeout;
    if snapshot_every != u64::MAX {
        config.snapshot_every = snapshot_every;
    }
    start_configured(mesh, seen, config).await
}

/// Starts a node configured by `config` on an empty memory store, in `mesh`.
async fn start_configured(mesh: &Arc<Mesh>, seen: &Seen, config: ReplicaConfig) -> Arc<Replica> {
    let name = config.node.clone();
    let node = name.clone();
    let seen = Arc::clone(seen);
    let observer: ClaimObserver = Arc::new(move |session, owner| {
        seen.lock()
            .expect("seen")
            .push((node.clone(), session.clone(), owner.clone()));
    });
    let replica = Replica::start(config, Storage::Memory, Some(observer))
        .await
        .expect("replica");
    replica.set_transport(Arc::new(Via {
        from: name.clone(),
        mesh: Arc::clone(mesh),
    }));
    mesh.replicas
        .lock()
        .expect("replicas")
        .insert(name, Arc::clone(&replica));
    replica
}

async fn leader_known(replicas: &[Arc<Replica>]) -> String {
    for _ in 0..200 {
        let leaders: HashSet<Option<String>> = replicas.iter().map(|r| r.leader()).collect();
        if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>().as_slice() {
            return leader.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected within 10 s");
}

fn key(name: &str) -> SessionKey {
    SessionKey {
        identity: "alice".into(),
        name: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_any_node_get_strictly_increasing_epochs_that_every_node_applies() {
    let (_mesh, replicas, seen) = three(Duration::from_secs(3)).await;
    leader_known(&replicas).await;
    let mut epochs = Vec::new();
    let mut previous: Option<&str> = None;
    for round in 0..2 {
        for replica in &replicas {
            let epoch = replica.claim(key("s")).await.expect("claimed");
            epochs.push(epoch);
            if let Some(previous) = previous {
                let heard = seen.lock().expect("seen").iter().any(|(node, _, owner)| {
                    node == previous && owner.epoch == epoch && owner.node == replica.node()
                });
                assert!(
                    heard,
                    "the previous owner {previous} applied (and so fenced) the claim by {} before it returned",
                    replica.node()
                );
            }
            previous = Some(replica.node());
            assert_eq!(
                replica.owner(&key("s")).map(|owner| owner.node),
                Some(replica.node().to_owned()),
                "round {round}: the claimant has applied its own claim when it returns"
            );
        }
    }
    assert!(
        epochs.windows(2).all(|pair| pair[0] < pair[1]),
        "{epochs:?}"
    );
    let last = *epochs.last().expect("epochs");
    for _ in 0..100 {
        if replicas
            .iter()
            .all(|r| r.owner(&key("s")).is_some_and(|owner| owner.epoch == last))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for replica in &replicas {
        let owner = replica.owner(&key("s")).expect("applied everywhere");
        assert_eq!((owner.node.as_str(), owner.epoch), ("n3", last));
        let heard: Vec<u64> = seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(node, _, _)| node == replica.node())
            .map(|(_, _, owner)| owner.epoch)
            .collect();
        assert_eq!(
            heard,
            epochs,
            "{} heard every claim, in order",
            replica.node()
        );
    }
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_refuses_claims_and_the_majority_goes_on() {
    let (mesh, replicas, _seen) = three(Duration::from_millis(1500)).await;
    let leader = leader_known(&replicas).await;
    // Cut off the leader: the worst case, it must not accept a claim it cannot commit.
    mesh.cut.lock().expect("cut").insert(leader.clone());
    let cut = replicas
        .iter()
        .find(|r| r.node() == leader)
        .expect("leader");
    let started = std::time::Instant::now();
    assert_eq!(
        cut.claim(key("s")).await,
        Err(ClaimError::NoQuorum(Duration::from_millis(1500)))
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // Its lease (1.5 s here) has run out: it knows it is cut off; the others are not.
    for _ in 0..100 {
        if !cut.in_contact() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!cut.in_contact(), "the cut-off node lost its lease");
    let other = replicas
        .iter()
        .find(|r| r.node() != leader)
        .expect("another node");
    let mut claimed = None;
    for _ in 0..5 {
        if let Ok(epoch) = other.claim(key("s")).await {
            claimed = Some(epoch);
            break;
        }
    }
    assert!(
        claimed.is_some(),
        "the majority elects a leader and commits"
    );
    for replica in replicas.iter().filter(|r| r.node() != leader) {
        assert!(replica.in_contact(), "{} holds its lease", replica.node());
    }
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_member_bootstraps_and_only_with_every_member_pristine() {
    let (_mesh, replicas, _seen) = three(Duration::from_secs(3)).await;
    leader_known(&replicas).await;
    // The group holds exactly one membership entry at index 0: initialized once.
    for replica in &replicas {
        let metrics = replica.raft.metrics().borrow().clone();
        let membership = metrics.membership_config;
        assert_eq!(membership.log_id().map(|id| id.index), Some(0));
        assert_eq!(membership.membership().voter_ids().count(), 3);
    }
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_purged_behind_snapshots_and_a_lagging_node_catches_up_from_one() {
    let (mesh, replicas, seen) = three_with(Duration::from_secs(3), 5).await;
    let leader = leader_known(&replicas).await;
    let behind = replicas
        .iter()
        .find(|r| r.node() != leader)
        .expect("a follower");
    let claimant = replicas
        .iter()
        .find(|r| r.node() != leader && r.node() != behind.node())
        .expect("another follower");
    mesh.cut
        .lock()
        .expect("cut")
        .insert(behind.node().to_owned());
    let mut last = 0;
    for i in 0..30 {
        last = claimant
            .claim(key(&format!("s{i}")))
            .await
            .expect("claimed");
    }
    let log_entries = claimant.log.entry_count();
    assert!(
        log_entries <= 6,
        "purged behind the snapshots: {log_entries} entries kept"
    );
    mesh.cut.lock().expect("cut").clear();
    for _ in 0..200 {
        if behind.owner(&key("s29")).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..30 {
        assert_eq!(
            behind.owner(&key(&format!("s{i}"))).map(|owner| owner.node),
            Some(claimant.node().to_owned()),
            "s{i} reached the lagging node"
        );
    }
    assert_eq!(
        behind.owner(&key("s29")).map(|owner| owner.epoch),
        Some(last)
    );
    let told = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|(node, _, _)| node == behind.node())
        .count();
    assert!(
        told >= 30,
        "its observer heard every claim ({told}), snapshot or not"
    );
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_the_side_of_a_leader_without_a_majority_loses_its_lease_before_a_claim_elsewhere_returns(
) {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, _seen) = group(&["n1", "n2", "n3", "n4", "n5"], timeout, u64::MAX).await;
    let leader = leader_known(&replicas).await;
    let follower = replicas
        .iter()
        .find(|r| r.node() != leader)
        .expect("a follower");
    follower.claim(key("s")).await.expect("claimed");
    // The old leader and the session's owner on one side, the three others on the other: the
    // leader keeps sending heartbeats to its follower, but has no majority.
    mesh.split
        .lock()
        .expect("split")
        .extend([leader.clone(), follower.node().to_owned()]);
    let claimant = replicas
        .iter()
        .find(|r| r.node() != leader && r.node() != follower.node())
        .expect("a member of the majority");
    let mut claimed = None;
    for _ in 0..5 {
        if let Ok(epoch) = claimant.claim(key("s")).await {
            claimed = Some(epoch);
            break;
        }
    }
    // The claim returns once its fence wait is over: by then the follower, which serves the
    // session until its lease runs out, must have lost it.
    assert!(
        claimed.is_some(),
        "the majority elects a leader and commits"
    );
    assert!(
        !follower.in_contact(),
        "the follower of a leader without a majority lost its lease before the claim returned"
    );
    let old = replicas
        .iter()
        .find(|r| r.node() == leader)
        .expect("the old leader");
    assert!(!old.in_contact(), "the old leader lost its lease");
    assert!(claimant.in_contact(), "the majority holds its lease");
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_fences_every_earlier_claimant_not_known_to_have_let_go_not_only_the_previous_owner(
) {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, _seen) = three_with(timeout, u64::MAX).await;
    let leader = leader_known(&replicas).await;
    let by_name = |name: &str| {
        replicas
            .iter()
            .find(|r| r.node() == name)
            .cloned()
            .expect("a replica")
    };
    let first = replicas
        .iter()
        .find(|r| r.node() != leader)
        .cloned()
        .expect("a follower");
    let second = by_name(&leader);
    let third = replicas
        .iter()
        .find(|r| r.node() != leader && r.node() != first.node())
        .cloned()
        .expect("the other follower");
    first.claim(key("s")).await.expect("claimed");
    // The first owner is cut off; the second claimant waits out its lease...
    mesh.cut
        .lock()
        .expect("cut")
        .insert(first.node().to_owned());
    let waiting = {
        let second = Arc::clone(&second);
        tokio::spawn(async move { second.claim(key("s")).await })
    };
    for _ in 0..100 {
        if third
            .owner(&key("s"))
            .is_some_and(|owner| owner.node == second.node())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        third.owner(&key("s")).map(|owner| owner.node),
        Some(second.node().to_owned())
    );
    // ...while a third claims the session from it: the second confirms at once, but the first
    // still serves the session until its lease runs out.
    third.claim(key("s")).await.expect("claimed");
    assert!(
        !first.in_contact(),
        "the first owner lost its lease before the third claim returned"
    );
    waiting.await.expect("task").expect("claimed");
    // Once their fences are complete, no earlier claim is left to fence.
    for _ in 0..100 {
        if third.unfenced(&key("s")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(third.unfenced(&key("s")), Vec::new());
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_previous_owner_is_cut_off_waits_only_its_lease_and_three_heartbeats() {
    // A lease of 3 s: a quarter of it (what the wait was longer by) is well above timers' jitter.
    let timeout = Duration::from_secs(3);
    let (mesh, replicas, _seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    let owner = replicas
        .iter()
        .find(|r| r.node() != leader)
        .expect("a follower");
    let claimant = replicas
        .iter()
        .find(|r| r.node() == leader)
        .expect("the leader");
    owner.claim(key("s")).await.expect("claimed");
    mesh.cut
        .lock()
        .expect("cut")
        .insert(owner.node().to_owned());
    let started = std::time::Instant::now();
    claimant.claim(key("s")).await.expect("claimed");
    let took = started.elapsed();
    assert!(
        !owner.in_contact(),
        "the cut-off owner lost its lease before the claim returned"
    );
    // The lease and three heartbeats (100 ms each), and a little for the commit and timers.
    assert!(
        took <= timeout + Duration::from_millis(300) + Duration::from_millis(350),
        "the claim waited {took:?}"
    );
    for replica in &replicas {
        replica.shutdown().await;
    }
}

/// The previous owner of a session (a follower, or the leader) is cut off; a second later (a
/// client noticing) another node claims the session. The claim returns only once the owner's
/// lease, as the owner measures it, has run out, but no later than the lease and three
/// heartbeats after the owner's last contact: the fence counts from that contact, not from
/// the question.
async fn a_claim_returns_once_the_cut_off_owner_s_lease_has_run_out(owner_is_leader: bool) {
    let lease = Duration::from_secs(3);
    let (mesh, replicas, _seen) = three(lease).await;
    let leader = leader_known(&replicas).await;
    let owner = replicas
        .iter()
        .find(|r| (r.node() == leader) == owner_is_leader)
        .cloned()
        .expect("the owner");
    let claimant = replicas
        .iter()
        .find(|r| r.node() != owner.node())
        .cloned()
        .expect("a claimant");
    owner.claim(key("s")).await.expect("claimed");
    // A few heartbeats, so that every lease is renewed in the leader's term.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut = std::time::Instant::now();
    mesh.cut
        .lock()
        .expect("cut")
        .insert(owner.node().to_owned());
    tokio::time::sleep(Duration::from_secs(1)).await;
    until("a leader among the others", || {
        claimant
            .leader()
            .is_some_and(|leader| leader != owner.node())
    })
    .await;
    claim_soon(&claimant, "s").await.expect("claimed");
    let done = std::time::Instant::now();
    let expiry = owner.lease_expiry().expect("the owner held a lease");
    assert!(
        done >= expiry,
        "the claim returned {:?} before the owner's lease ran out",
        expiry - done
    );
    assert!(
        !owner.in_contact(),
        "the owner lost its lease before the claim returned"
    );
    // The lease and three heartbeats from the owner's last contact, and a little for timers.
    let took = done - cut;
    assert!(
        took <= lease + Duration::from_millis(300) + Duration::from_millis(400),
        "the claim returned {took:?} after the owner was cut off"
    );
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_returns_once_the_cut_off_follower_owner_s_lease_has_run_out() {
    a_claim_returns_once_the_cut_off_owner_s_lease_has_run_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_returns_once_the_cut_off_leader_owner_s_lease_has_run_out() {
    a_claim_returns_once_the_cut_off_owner_s_lease_has_run_out(true).await;
}

/// Waits (at most 10 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

/// Claims `session` on `replica`, retried while the group elects (at most five tries).
async fn claim_soon(replica: &Replica, session: &str) -> Result<u64, ClaimError> {
    let mut last = Err(ClaimError::Stopped);
    for _ in 0..5 {
        last = replica.claim(key(session)).await;
        if last.is_ok() {
            break;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_member_added_through_a_follower_catches_up_and_votes() {
    let timeout = Duration::from_millis(1500);
    let (mesh, mut replicas, seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    replicas[0].claim(key("before")).await.expect("claimed");
    // n4 is configured with the members it joins, not itself: it waits to be added.
    let n4 = start(
        &mesh,
        &seen,
        "n4",
        &names(&["n1", "n2", "n3"]),
        timeout,
        u64::MAX,
    )
    .await;
    assert_eq!(
        n4.claim(key("early")).await,
        Err(ClaimError::NoQuorum(timeout)),
        "not a member yet"
    );
    let follower = replicas
        .iter()
        .find(|r| r.node() != leader)
        .expect("a follower");
    let membership = follower
        .change_membership(MembershipChange::Add("n4".into()), Duration::from_secs(10))
        .await
        .expect("added");
    assert_eq!(membership.voters, names(&["n1", "n2", "n3", "n4"]));
    assert!(membership.learners.is_empty() && !membership.joint);
    replicas.push(Arc::clone(&n4));
    until("every node knows four voters", || {
        replicas.iter().all(|r| r.membership().voters.len() == 4)
    })
    .await;
    assert_eq!(
        n4.owner(&key("before")).map(|owner| owner.node),
        Some("n1".to_owned()),
        "the new member caught up with the log"
    );
    // Adding a voter again changes nothing.
    let again = replicas[0]
        .change_membership(MembershipChange::Add("n4".into()), Duration::from_secs(5))
        .await
        .expect("already a voter");
    assert_eq!(again.voters.len(), 4);
    // Cut the leader off: three of four remain, two of them the old members, so a new leader
    // and every commit now need n4's vote.
    mesh.cut.lock().expect("cut").insert(leader.clone());
    claim_soon(&n4, "after")
        .await
        .expect("claimed with n4's vote");
    let new_leader = n4.leader().expect("a leader");
    assert_ne!(new_leader, leader);
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_no_longer_counts_and_the_remaining_three_keep_committing() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, _seen) = group(&["n1", "n2", "n3", "n4"], timeout, u64::MAX).await;
    let leader = leader_known(&replicas).await;
    // Remove the leader itself: it hands over once the new configuration is committed.
    let membership = replicas[0]
        .change_membership(
            MembershipChange::Remove(leader.clone()),
            Duration::from_secs(10),
        )
        .await
        .expect("removed");
    assert_eq!(membership.voters.len(), 3);
    assert!(!membership.voters.contains(&leader));
    let rest: Vec<&Arc<Replica>> = replicas.iter().filter(|r| r.node() != leader).collect();
    until("the others know three voters", || {
        rest.iter().all(|r| r.membership().voters.len() == 3)
    })
    .await;
    assert_eq!(
        replicas[0]
            .change_membership(
                MembershipChange::Remove(leader.clone()),
                Duration::from_secs(5)
            )
            .await,
        Err(MembershipError::NotAMember(leader.clone()))
    );
    // Stop it and cut one more: two of the remaining three are a majority now (two of the
    // old four would not be).
    mesh.cut.lock().expect("cut").insert(leader.clone());
    mesh.cut
        .lock()
        .expect("cut")
        .insert(rest[0].node().to_owned());
    claim_soon(rest[1], "s")
        .await
        .expect("committed by two of three");
    claim_soon(rest[2], "s")
        .await
        .expect("committed by two of three");
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_replaced_by_an_empty_node_of_the_same_name_catches_up_from_a_snapshot() {
    let timeout = Duration::from_millis(1500);
    let (mesh, mut replicas, seen) = three_with(timeout, 5).await;
    let leader = leader_known(&replicas).await;
    let dead = replicas
        .iter()
        .position(|r| r.node() != leader)
        .expect("a follower");
    let dead_name = replicas[dead].node().to_owned();
    // It dies for good, disk and all.
    mesh.cut.lock().expect("cut").insert(dead_name.clone());
    let old = replicas.remove(dead);
    old.shutdown().await;
    mesh.replicas.lock().expect("replicas").remove(&dead_name);
    mesh.cut.lock().expect("cut").clear();
    let mut last = 0;
    for i in 0..30 {
        last = replicas[0]
            .claim(key(&format!("s{i}")))
            .await
            .expect("claimed by the two left");
    }
    // The runbook: remove the dead member, start its replacement empty, add it.
    let membership = replicas[1]
        .change_membership(
            MembershipChange::Remove(dead_name.clone()),
            Duration::from_secs(10),
        )
        .await
        .expect("removed");
    assert_eq!(membership.voters.len(), 2);
    let members = names(&["n1", "n2", "n3"]);
    let fresh = start(&mesh, &seen, &dead_name, &members, timeout, 5).await;
    let membership = replicas[0]
        .change_membership(
            MembershipChange::Add(dead_name.clone()),
            Duration::from_secs(10),
        )
        .await
        .expect("added");
    assert_eq!(membership.voters, members);
    let purged = replicas.iter().all(|r| r.log.entry_count() <= 6);
    assert!(
        purged,
        "the log the new node needed was purged: a snapshot brought it"
    );
    until("the new node applied every claim", || {
        fresh.owner(&key("s29")).map(|owner| owner.epoch) == Some(last)
    })
    .await;
    for i in 0..30 {
        assert!(fresh.owner(&key(&format!("s{i}"))).is_some(), "s{i}");
    }
    replicas.push(Arc::clone(&fresh));
    // It votes: with one of the others cut, it and the third are the majority.
    let other = replicas
        .iter()
        .find(|r| r.node() != dead_name)
        .expect("another")
        .node()
        .to_owned();
    mesh.cut.lock().expect("cut").insert(other);
    claim_soon(&fresh, "s")
        .await
        .expect("committed with the new node");
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_refuse_unknown_nodes_and_the_last_member() {
    let timeout = Duration::from_millis(1500);
    let (_mesh, replicas, _seen) = group(&["n1"], timeout, u64::MAX).await;
    leader_known(&replicas).await;
    let n1 = &replicas[0];
    assert_eq!(
        n1.change_membership(MembershipChange::Add("n9".into()), Duration::from_secs(2))
            .await,
        Err(MembershipError::UnknownNode("n9".into()))
    );
    assert_eq!(
        n1.change_membership(
            MembershipChange::Remove("n9".into()),
            Duration::from_secs(2)
        )
        .await,
        Err(MembershipError::NotAMember("n9".into()))
    );
    assert_eq!(
        n1.change_membership(
            MembershipChange::Remove("n1".into()),
            Duration::from_secs(2)
        )
        .await,
        Err(MembershipError::LastMember("n1".into()))
    );
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fourth_member_joins_the_lease_needs_three_of_four() {
    let timeout = Duration::from_millis(1500);
    let (mesh, mut replicas, seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    let n4 = start(
        &mesh,
        &seen,
        "n4",
        &names(&["n1", "n2", "n3", "n4"]),
        timeout,
        u64::MAX,
    )
    .await;
    replicas.push(Arc::clone(&n4));
    let by_name = |name: &str| {
        replicas
            .iter()
            .find(|r| r.node() == name)
            .cloned()
            .expect("a replica")
    };
    by_name(&leader)
        .change_membership(MembershipChange::Add("n4".into()), Duration::from_secs(10))
        .await
        .expect("added");
    // The leader and one other member: two of the three configured at start, but not a
    // majority of the four voters now. The leader keeps sending heartbeats to that one, and
    // must lose its lease all the same.
    let others: Vec<String> = replicas
        .iter()
        .map(|r| r.node().to_owned())
        .filter(|name| *name != leader)
        .collect();
    mesh.cut
        .lock()
        .expect("cut")
        .extend([others[0].clone(), others[1].clone()]);
    let old = by_name(&leader);
    until("the leader of two of four lost its lease", || {
        !old.in_contact()
    })
    .await;
    let follower = by_name(&others[2]);
    until("its follower lost its lease with it", || {
        !follower.in_contact()
    })
    .await;
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_a_quorum_times_out_and_the_next_one_is_refused_while_it_is_pending() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, _seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    let old = replicas
        .iter()
        .find(|r| r.node() == leader)
        .expect("the leader");
    let others: Vec<String> = replicas
        .iter()
        .map(|r| r.node().to_owned())
        .filter(|name| *name != leader)
        .collect();
    // The leader alone: openraft 0.9 keeps it leader, but nothing it writes commits.
    mesh.split.lock().expect("split").insert(leader.clone());
    let started = std::time::Instant::now();
    assert_eq!(
        old.change_membership(
            MembershipChange::Remove(others[0].clone()),
            Duration::from_secs(1)
        )
        .await,
        Err(MembershipError::NoQuorum(Duration::from_secs(1)))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        old.leader().as_deref(),
        Some(leader.as_str()),
        "still leader"
    );
    assert_eq!(
        old.change_membership(
            MembershipChange::Remove(others[1].clone()),
            Duration::from_secs(1)
        )
        .await,
        Err(MembershipError::InProgress),
        "the first change's joint configuration is not committed"
    );
    for replica in replicas.iter() {
        replica.shutdown().await;
    }
}

/// Three members, each a lease and claim timeout of `timeout`, allowing one claim per
/// identity; and the two followers: the one that will be cut off, and the other.
async fn three_allowing_one_claim_each(
    timeout: Duration,
) -> (Arc<Mesh>, Vec<Arc<Replica>>, Arc<Replica>, Arc<Replica>) {
    let mesh = Arc::new(Mesh::default());
    let seen: Seen = Arc::default();
    let members = names(&["n1", "n2", "n3"]);
    let mut replicas = Vec::new();
    for name in &members {
        let mut config = ReplicaConfig::new(name.clone(), members.clone());
        config.claim_timeout = timeout;
        config.lease = timeout;
        config.max_claims_per_identity = 1;
        replicas.push(start_configured(&mesh, &seen, config).await);
    }
    let leader = leader_known(&replicas).await;
    let gone = replicas
        .iter()
        .find(|r| r.node() != leader)
        .cloned()
        .expect("a follower");
    let other = replicas
        .iter()
        .find(|r| r.node() != leader && r.node() != gone.node())
        .cloned()
        .expect("the other follower");
    (mesh, replicas, gone, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_of_a_removed_member_are_released_once_its_lease_has_run_out() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, gone, other) = three_allowing_one_claim_each(timeout).await;
    // Alice's one claim is held on the node that then dies for good: her bound is spent.
    gone.claim(key("s1")).await.expect("claimed");
    mesh.cut.lock().expect("cut").insert(gone.node().to_owned());
    assert_eq!(
        other.claim(key("s2")).await,
        Err(ClaimError::TooManyForIdentity(1))
    );
    other
        .change_membership(
            MembershipChange::Remove(gone.node().to_owned()),
            Duration::from_secs(10),
        )
        .await
        .expect("removed");
    // After the fence wait (its lease and three heartbeats) its claim is released, and
    // alice's bound has room again.
    let removed = std::time::Instant::now();
    let mut claimed = other.claim(key("s2")).await;
    while claimed.is_err() && removed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        claimed = other.claim(key("s2")).await;
    }
    claimed.expect("claimed once the removed member's claim is released");
    assert!(
        removed.elapsed() >= Duration::from_millis(1500),
        "not before its lease ran out: {:?}",
        removed.elapsed()
    );
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_releases_the_claims_of_a_member_out_of_contact_beyond_its_lease() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, gone, other) = three_allowing_one_claim_each(timeout).await;
    // Alice's one claim is held on the node that then dies for good (not removed): her
    // bound is spent until the leader releases it.
    let epoch = gone.claim(key("s1")).await.expect("claimed");
    let cut = std::time::Instant::now();
    let cut_ms = super::replica::unix_ms();
    mesh.cut.lock().expect("cut").insert(gone.node().to_owned());
    assert_eq!(
        other.claim(key("s2")).await,
        Err(ClaimError::TooManyForIdentity(1))
    );
    until("the claim of the member out of contact is released", || {
        !other.released(0, 10).is_empty()
    })
    .await;
    assert!(
        cut.elapsed() >= timeout,
        "not before its lease ran out: {:?}",
        cut.elapsed()
    );
    let released = other.released(0, 10);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(
        (released[0].session.clone(), released[0].epoch),
        (key("s1"), epoch)
    );
    // Released at its last contact as the leader knew it: about when it was cut off.
    let at_ms = released[0].at_ms.expect("the release says when");
    assert!(
        at_ms.abs_diff(cut_ms) < 1_000,
        "released at {at_ms}, cut off at {cut_ms}"
    );
    other
        .claim(key("s2"))
        .await
        .expect("claimed: alice's bound has room again");
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_previous_owner_released_it_does_not_wait_for_that_node_gone_since() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, _seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    let owner = replicas
        .iter()
        .find(|r| r.node() != leader)
        .expect("a follower");
    let claimant = replicas
        .iter()
        .find(|r| r.node() == leader)
        .expect("the leader");
    let epoch = owner.claim(key("s")).await.expect("claimed");
    until("the claimant applies the claim", || {
        claimant.owner(&key("s")).is_some_and(|o| o.epoch == epoch)
    })
    .await;
    let before = claimant.status().last_applied;
    owner.release(key("s"), epoch);
    // The release is the next entry: once the claimant has applied it, the owner may go.
    until("the release is written", || {
        claimant.status().last_applied > before
    })
    .await;
    mesh.cut
        .lock()
        .expect("cut")
        .insert(owner.node().to_owned());
    let started = std::time::Instant::now();
    claimant.claim(key("s")).await.expect("claimed");
    let took = started.elapsed();
    // Not the fence wait (the lease and three heartbeats: 1.8 s here).
    assert!(took < Duration::from_secs(1), "the claim waited {took:?}");
    for replica in &replicas {
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_s_records_written_by_its_owner_reach_every_node_and_a_stale_owner_s_are_refused()
{
    let (_mesh, replicas, _seen) = three(Duration::from_secs(3)).await;
    leader_known(&replicas).await;
    let put = |key: &'static [u8]| crate::RecordOp::Put {
        key: bytes::Bytes::from_static(key),
        value: bytes::Bytes::from_static(b"v"),
    };
    let first = claim_soon(&replicas[0], "s").await.expect("claimed");
    let refused = replicas[0]
        .write(vec![crate::SessionWrite {
            session: key("s"),
            epoch: first,
            ops: vec![put(b"sub/1")],
        }])
        .await
        .expect("committed");
    assert!(refused.is_empty(), "{refused:?}");
    until("every node applied the write", || {
        replicas
            .iter()
            .all(|replica| replica.records(&key("s")).is_some_and(|r| r.len() == 1))
    })
    .await;
    // n3 takes the session over: it finds what n1 wrote, and n1's late write is refused.
    let second = claim_soon(&replicas[2], "s").await.expect("claimed");
    assert!(replicas[2].records(&key("s")).is_some_and(|r| r.len() == 1));
    let refused = replicas[0]
        .write(vec![crate::SessionWrite {
            session: key("s"),
            epoch: first,
            ops: vec![put(b"sub/2")],
        }])
        .await
        .expect("committed");
    assert_eq!(refused, vec![(key("s"), crate::WriteRefusal::NotOwner)]);
    let refused = replicas[2]
        .write(vec![crate::SessionWrite {
            session: key("s"),
            epoch: second,
            ops: vec![put(b"sub/3")],
        }])
        .await
        .expect("committed");
    assert!(refused.is_empty());
    let keys: Vec<Vec<u8>> = replicas[2]
        .records(&key("s"))
        .expect("records")
        .keys()
        .map(|key| key.to_vec())
        .collect();
    assert_eq!(keys, vec![b"sub/1".to_vec(), b"sub/3".to_vec()]);
    for replica in &replicas {
        replica.shutdown().await;
    }
}

/// A follower that has not caught up claims a session through the leader, which finds it out
/// of contact and releases the claim; once the follower holds its lease again, it has applied
/// that release when it has applied through [`Replica::caught_up_index`], so it does not
/// serve under the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_released_while_its_node_was_out_of_contact_is_known_released_once_caught_up() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, _seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    let leading = replicas
        .iter()
        .find(|r| r.node() == leader)
        .cloned()
        .expect("the leader");
    let behind = replicas
        .iter()
        .find(|r| r.node() != leader)
        .cloned()
        .expect("a follower");
    mesh.deaf
        .lock()
        .expect("deaf")
        .insert(behind.node().to_owned());
    until("the follower lost its lease", || !behind.in_contact()).await;
    let epoch = behind
        .claim(key("s"))
        .await
        .expect("committed through the leader");
    until(
        "the leader released the claim of the node out of contact",
        || leading.is_released(&key("s"), epoch),
    )
    .await;
    // The leader has applied the release.
    let release_written_by = leading.caught_up_index();

    mesh.deaf.lock().expect("deaf").clear();
    until("the follower holds its lease again", || behind.in_contact()).await;
    assert!(
        behind.caught_up_index() >= release_written_by,
        "the commit index that came with its lease covers the release: {} < {release_written_by}",
        behind.caught_up_index()
    );
    assert!(
        behind
            .applied_through(behind.caught_up_index(), timeout)
            .await,
        "caught up"
    );
    assert!(
        behind.is_released(&key("s"), epoch),
        "the release written while it was out of contact is applied"
    );
    for replica in &replicas {
        replica.shutdown().await;
    }
}

/// A node that comes back with no Raft state (memory mode restarted, a disk lost) has
/// forgotten what it acknowledged. While a member it cannot hear from may hold an entry it
/// helped commit, it votes for no one; so the third node, which never had the entry, cannot
/// be elected by it, and the entry is not lost. Once every member answers, the node that has
/// the entry is elected and the empty one catches up from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_restarted_voter_elects_no_leader_that_lacks_an_entry_it_helped_commit() {
    let timeout = Duration::from_millis(1500);
    let (mesh, replicas, seen) = three(timeout).await;
    let leader = leader_known(&replicas).await;
    let mut followers = replicas.iter().filter(|r| r.node() != leader);
    let restarted_name = followers.next().expect("a follower").node().to_owned();
    let behind_name = followers
        .next()
        .expect("another follower")
        .node()
        .to_owned();
    // The claim is committed by the leader and one follower; the third never sees it.
    mesh.cut.lock().expect("cut").insert(behind_name.clone());
    let holder = replicas
        .iter()
        .find(|r| r.node() == leader)
        .expect("leader");
    let epoch = claim_soon(holder, "committed")
        .await
        .expect("committed by two of three");
    // The leader goes silent; the follower that helped commit restarts empty.
    {
        let mut cut = mesh.cut.lock().expect("cut");
        cut.clear();
        cut.insert(leader.clone());
    }
    let old = replicas
        .iter()
        .find(|r| r.node() == restarted_name)
        .expect("restarted");
    old.shutdown().await;
    mesh.replicas
        .lock()
        .expect("replicas")
        .remove(&restarted_name);
    let members = names(&["n1", "n2", "n3"]);
    let restarted = start(&mesh, &seen, &restarted_name, &members, timeout, u64::MAX).await;
    let behind = replicas
        .iter()
        .find(|r| r.node() == behind_name)
        .expect("behind");
    // The two that can talk hold no copy of the claim between them: they must elect no one
    // and commit nothing.
    for _ in 0..3 {
        match behind.claim(key("meanwhile")).await {
            Err(ClaimError::NoQuorum(_)) => {}
            Ok(_) => panic!(
                "a leader was elected without the committed claim (it owns {:?}; leader {:?})",
                behind.owner(&key("committed")),
                behind.leader()
            ),
            Err(other) => panic!("expected no quorum, got {other:?}"),
        }
    }
    // The holder is back: it is elected, and every node applies the claim.
    mesh.cut.lock().expect("cut").clear();
    claim_soon(behind, "after")
        .await
        .expect("committed once every member answers");
    for replica in [holder, behind, &restarted] {
        until("every node applied the committed claim", || {
            replica.owner(&key("committed")).map(|owner| owner.epoch) == Some(epoch)
        })
        .await;
    }
    until(
        "the restarted node caught up and votes as any member",
        || !restarted.rejoin.is_rejoining(),
    )
    .await;
    for replica in replicas.iter().filter(|r| r.node() != restarted_name) {
        replica.shutdown().await;
    }
    restarted.shutdown().await;
}
