//! The expiry of released named sessions in a cluster (docs/CLUSTERING.md, "Expiry"). On the
//! Raft leader, once per lease, the released claims (no connection holds them: their client
//! went away, or their node was out of contact and the leader released them) are looked at,
//! a bounded number each round, and those whose session has outlived its expiry are written as
//! expired ([`Replica::expire`]): every member forgets the claim with the session's records,
//! and a client that names the session afterwards gets a new one. The detach time is the
//! session record's, else the release's; the expiry the session's own (the shorter one its
//! client asked for), else `sessions.expiry`. This module decides; the replication crate knows
//! no expiry. It names no transport.

use std::sync::Weak;
use std::time::Duration;

use cassini_replication::replica::MAX_RELEASES_PER_ENTRY;
use cassini_replication::{ReleasedClaim, Replica, SessionKey};

use crate::storage::records::SessionRecord;
use crate::storage::session_records;

/// The most released claims one round looks at; the next round goes on after the last.
const MAX_EXAMINED_PER_ROUND: usize = 4096;

/// When the session of a released claim expires (milliseconds since the Unix epoch): its
/// detach time (the later of the session record's and the release's: a record written before
/// the session's last attach, whose node died before writing that attach, tells an older one)
/// plus its expiry (the record's, at most `most`, else `most`); `None` if neither tells a
/// detach time.
pub(crate) fn expires_at_ms(
    record: Option<&SessionRecord>,
    released_at_ms: Option<u64>,
    most: Duration,
) -> Option<u64> {
    let detached = record
        .and_then(|record| record.detached_at_ms)
        .max(released_at_ms)?;
    let expiry = record
        .and_then(|record| record.expiry_ms)
        .map_or(most, |ms| Duration::from_millis(ms).min(most));
    let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
    Some(detached.saturating_add(expiry_ms))
}

/// Milliseconds since the Unix epoch, now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Once every `every`, while this node is the leader: writes as expired the released claims
/// whose session has outlived `most` (`sessions.expiry`) or its own shorter expiry. Ends with
/// the replica.
pub(crate) async fn sweep(replica: Weak<Replica>, most: Duration, every: Duration) {
    let mut rounds = tokio::time::interval(every);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Where the next round goes on (an epoch): the released claims are looked at in turns.
    let mut after = 0;
    loop {
        rounds.tick().await;
        let Some(replica) = replica.upgrade() else {
            return;
        };
        if !replica.is_leader() {
            after = 0;
            continue;
        }
        let released = replica.released(after, MAX_EXAMINED_PER_ROUND);
        after = match released.last() {
            Some(last) if released.len() == MAX_EXAMINED_PER_ROUND => last.epoch,
            _ => 0,
        };
        let now = unix_ms();
        let due: Vec<(SessionKey, u64)> = released
            .into_iter()
            .filter(|claim| {
                let prefix = session_records::session_record_key();
                let records = replica.records_under(&claim.session, &prefix);
                let record = session_records::session_record(&records);
                expires_at_ms(record.as_ref(), claim.at_ms, most).is_some_and(|at| at <= now)
            })
            .map(|ReleasedClaim { session, epoch, .. }| (session, epoch))
            .collect();
        for batch in due.chunks(MAX_RELEASES_PER_ENTRY) {
            for (session, epoch) in batch {
                tracing::debug!(identity = %session.identity, name = %session.name, epoch, "a released session expired");
            }
            match replica.expire(batch.to_vec()).await {
                Ok(()) => tracing::info!(
                    sessions = batch.len(),
                    "released sessions expired: their claims and records are forgotten on every node"
                ),
                Err(err) => {
                    tracing::debug!(%err, "the expiry of released sessions was not written: tried again next round");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(detached_at_ms: Option<u64>, expiry_ms: Option<u64>) -> SessionRecord {
        SessionRecord {
            id: 1,
            identity: "alice".into(),
            last_subscription: 0,
            detached_at_ms,
            name: Some("s".into()),
            expiry_ms,
        }
    }

    const MOST: Duration = Duration::from_secs(300);

    #[test]
    fn a_session_expires_from_the_later_of_its_stored_detach_time_and_its_release() {
        assert_eq!(
            expires_at_ms(Some(&record(Some(1_000), None)), Some(9_000), MOST),
            Some(309_000),
            "a stored detach time older than the release may predate the last attach"
        );
        assert_eq!(
            expires_at_ms(Some(&record(Some(9_000), None)), Some(1_000), MOST),
            Some(309_000),
            "detached after the release's time"
        );
        assert_eq!(
            expires_at_ms(Some(&record(Some(1_000), None)), None, MOST),
            Some(301_000)
        );
        assert_eq!(
            expires_at_ms(Some(&record(None, None)), Some(9_000), MOST),
            Some(309_000),
            "attached when its node died: from the node's last contact"
        );
        assert_eq!(expires_at_ms(None, Some(9_000), MOST), Some(309_000));
        assert_eq!(expires_at_ms(Some(&record(None, None)), None, MOST), None);
    }

    #[test]
    fn a_session_s_own_shorter_expiry_counts_and_never_beyond_the_configuration() {
        assert_eq!(
            expires_at_ms(Some(&record(Some(1_000), Some(5_000))), None, MOST),
            Some(6_000)
        );
        assert_eq!(
            expires_at_ms(Some(&record(Some(1_000), Some(900_000))), None, MOST),
            Some(301_000)
        );
    }
}
