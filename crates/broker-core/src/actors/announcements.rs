//! Subscription ends on their way from a session to the driver of its attached connection,
//! which writes each on the control stream as `SubscriptionEnded`.
//!
//! A queue behind a lock and a [`Notify`] rather than a channel: a tokio channel allocates its
//! first block of 32 slots as it is made (about 1.8 KiB for these notices), every attach makes
//! one, and few connections ever see a subscription end. Unbounded in type, bounded in use: at
//! most twice `max_subscriptions_per_session` (the session's record of ends, then one per
//! subscription it holds).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cassini_protocol::SubscriptionEnded;
use tokio::sync::Notify;

/// The notices not yet taken, and the driver's wake-up.
#[derive(Default)]
struct Queue {
    /// Notices in the order the session announced them.
    notices: Mutex<VecDeque<SubscriptionEnded>>,
    /// Signalled after each notice is queued.
    ready: Notify,
}

/// A new queue: the session's end and the driver's end.
pub(crate) fn announcements() -> (Announcer, Announcements) {
    let queue = Arc::new(Queue::default());
    (Announcer(Arc::clone(&queue)), Announcements(queue))
}

/// The session's end.
pub(crate) struct Announcer(Arc<Queue>);

impl Announcer {
    /// Queues `notice` for the driver.
    pub(crate) fn send(&self, notice: SubscriptionEnded) {
        self.0
            .notices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back(notice);
        self.0.ready.notify_one();
    }
}

/// The driver's end.
pub(crate) struct Announcements(Arc<Queue>);

impl Announcements {
    /// The next notice, once there is one. Cancel-safe: a notice stays queued until this
    /// returns it. Once the session has let go of the connection nothing more arrives, and
    /// this stays pending.
    pub(crate) async fn next(&self) -> SubscriptionEnded {
        loop {
            // `notify_one` leaves a permit when nobody waits, so a notice queued between this
            // check and the wait below is not missed.
            let next = self
                .0
                .notices
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop_front();
            if let Some(notice) = next {
                return notice;
            }
            self.0.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cassini_protocol::{ErrorCode, SubscriptionEnded};
    use tokio::time::timeout;

    use super::announcements;

    fn notice(subscription: u64) -> SubscriptionEnded {
        SubscriptionEnded {
            subscription,
            code: ErrorCode::NOT_AUTHORIZED,
            reason: String::new(),
        }
    }

    #[tokio::test]
    async fn notices_arrive_in_order_whether_queued_before_or_while_waiting() {
        let (announcer, announcements) = announcements();
        announcer.send(notice(1));
        announcer.send(notice(2));
        assert_eq!(announcements.next().await.subscription, 1);
        assert_eq!(announcements.next().await.subscription, 2);
        let waiting = tokio::spawn(async move { announcements.next().await });
        tokio::task::yield_now().await;
        announcer.send(notice(3));
        let third = timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(third.subscription, 3);
    }

    #[tokio::test]
    async fn a_wait_given_up_loses_no_notice() {
        let (announcer, announcements) = announcements();
        assert!(
            timeout(Duration::from_millis(10), announcements.next())
                .await
                .is_err(),
            "nothing to announce"
        );
        announcer.send(notice(4));
        let fourth = timeout(Duration::from_secs(10), announcements.next())
            .await
            .expect("the notice");
        assert_eq!(fourth.subscription, 4);
    }
}
