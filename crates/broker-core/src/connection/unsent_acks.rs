//! The dedupe pairs of acknowledged publishes whose answer was never sent.
//!
//! A publish with `ack` puts its (identity, message id) pair in the node's dedupe window when it
//! is admitted, before what it stored is durable (disk mode) or committed (a cluster with
//! `members`). Its `PublishAck` waits for that; if the store or the cluster refuses it, the
//! answer is a `PublishRejected` and the pair is forgotten, so that the client's resend is
//! accepted again. When the connection ends first, the answer is never written: [`UnsentAcks`]
//! then waits for the outcome on a task of its own and forgets the pairs if it was a refusal.
//! Without it, the resend would be answered `duplicate: true` for a message nobody holds. An
//! answer of `NO_QUORUM` for an entry that is only late (written again, it may still commit)
//! leaves the pairs to it too: forgotten at once, a resend would be taken again and the
//! message delivered twice once the first entry commits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::dedupe::PublishWindow;

/// Whether what the publishes wait for was made durable (or committed): `false` for a refusal.
pub(crate) type Outcome = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The pairs of one answer's acknowledgements until the answer is settled; dropped unsettled,
/// they are forgotten unless [`Outcome`] says the publishes were kept.
pub(crate) struct UnsentAcks {
    dedupe: Arc<PublishWindow>,
    identity: Arc<str>,
    message_ids: Vec<u64>,
    /// The replicated store's ticket they wait for (0: none): a pair noted with another one
    /// was remembered again since, for a newer publish, and is kept.
    replicated_at: u64,
    outcome: Option<Outcome>,
}

impl UnsentAcks {
    /// The pairs of `message_ids` (acknowledgements that are not duplicates) of `identity`,
    /// whose publishes wait for `outcome` (and for the replicated store's `replicated_at`,
    /// 0 for none).
    pub(crate) fn new(
        dedupe: Arc<PublishWindow>,
        identity: Arc<str>,
        message_ids: Vec<u64>,
        replicated_at: u64,
        outcome: Outcome,
    ) -> Self {
        Self {
            dedupe,
            identity,
            message_ids,
            replicated_at,
            outcome: Some(outcome),
        }
    }

    /// The answer's outcome is known and acted on: nothing is left to do.
    pub(crate) fn settled(mut self) {
        self.message_ids.clear();
    }
}

impl Drop for UnsentAcks {
    fn drop(&mut self) {
        if self.message_ids.is_empty() {
            return;
        }
        let (dedupe, identity) = (Arc::clone(&self.dedupe), Arc::clone(&self.identity));
        let message_ids = std::mem::take(&mut self.message_ids);
        let ticket = self.replicated_at;
        let forget = move || {
            for message_id in message_ids {
                dedupe.forget_if(&identity, message_id, |at| ticket == 0 || *at == ticket);
            }
        };
        match (self.outcome.take(), tokio::runtime::Handle::try_current()) {
            (Some(outcome), Ok(runtime)) => {
                runtime.spawn(async move {
                    if !outcome.await {
                        forget();
                    }
                });
            }
            // No runtime to wait on (the broker is shutting down): a resend is better taken
            // again than answered as a duplicate of what may be lost.
            _ => forget(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::sync::oneshot;

    use super::*;
    use crate::config::DedupeConfig;

    fn window_holding(identity: &Arc<str>, message_id: u64) -> Arc<PublishWindow> {
        let window = Arc::new(PublishWindow::new(DedupeConfig::default(), 1000));
        assert!(window.first_time(identity, message_id, Instant::now()));
        window
    }

    /// Whether the window would take `message_id` again: its pair was forgotten.
    fn forgotten(window: &PublishWindow, identity: &Arc<str>, message_id: u64) -> bool {
        let again = window.first_time(identity, message_id, Instant::now());
        if again {
            window.forget(identity, message_id);
        }
        again
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "not within 5 s: {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn an_unsent_answer_whose_publish_is_refused_forgets_its_pair() {
        let identity: Arc<str> = Arc::from("dev");
        let window = window_holding(&identity, 7);
        let (refusal, outcome) = oneshot::channel::<bool>();
        let unsent = UnsentAcks::new(
            Arc::clone(&window),
            Arc::clone(&identity),
            vec![7],
            0,
            Box::pin(async move { outcome.await.unwrap_or(false) }),
        );
        drop(unsent);
        assert!(!forgotten(&window, &identity, 7), "kept while undecided");
        let _ = refusal.send(false);
        until("the refused publish's pair is forgotten", || {
            forgotten(&window, &identity, 7)
        })
        .await;
    }

    #[tokio::test]
    async fn a_refusal_keeps_a_pair_remembered_again_for_a_newer_publish() {
        // The first publish (entry ticket 3) was refused; meanwhile its pair was pushed out
        // and remembered again for a resend whose entry is ticket 5.
        let identity: Arc<str> = Arc::from("dev");
        let window = window_holding(&identity, 7);
        window.note(&identity, 7, Instant::now(), |at| *at = 5);
        assert!(window.first_time(&identity, 8, Instant::now()));
        window.note(&identity, 8, Instant::now(), |at| *at = 3);
        let refused = |message_id| {
            UnsentAcks::new(
                Arc::clone(&window),
                Arc::clone(&identity),
                vec![message_id],
                3,
                Box::pin(async { false }),
            )
        };
        drop(refused(7));
        drop(refused(8));
        until("the refused publish's own pair is forgotten", || {
            forgotten(&window, &identity, 8)
        })
        .await;
        assert!(
            !forgotten(&window, &identity, 7),
            "the newer publish's pair is kept"
        );
    }

    #[tokio::test]
    async fn an_unsent_answer_whose_publish_is_kept_keeps_its_pair() {
        let identity: Arc<str> = Arc::from("dev");
        let window = window_holding(&identity, 7);
        let (kept, done) = oneshot::channel::<()>();
        let unsent = UnsentAcks::new(
            Arc::clone(&window),
            Arc::clone(&identity),
            vec![7],
            0,
            Box::pin(async move {
                let _ = kept.send(());
                true
            }),
        );
        drop(unsent);
        done.await.expect("the outcome was awaited");
        tokio::task::yield_now().await;
        assert!(!forgotten(&window, &identity, 7));
    }

    #[tokio::test]
    async fn a_settled_answer_leaves_its_pair_to_the_writer() {
        let identity: Arc<str> = Arc::from("dev");
        let window = window_holding(&identity, 7);
        let unsent = UnsentAcks::new(
            Arc::clone(&window),
            Arc::clone(&identity),
            vec![7],
            0,
            Box::pin(async { false }),
        );
        unsent.settled();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!forgotten(&window, &identity, 7));
    }
}
