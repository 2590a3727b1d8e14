//! What a queue's entries hold, counted in the broker's memory budget.
//!
//! A message is charged to the budget once, however many queues share it
//! ([`crate::memory::MemoryCharge`]); each queue charges the entries it holds itself: a waiting
//! message's place (its sequence, its handle on the shared message, when it was queued) or an
//! at-least-once subscription's message in flight. So a message offered to ten thousand
//! subscriptions counts ten thousand entries, not one message.
//!
//! The charge follows the entries in steps of [`STEP`] entries, rounded up, and changes only
//! when they cross a step (on the way down, two steps, or to none): a queue touches the
//! budget's shared count once in many pushes and pops, and never counts less than it holds.
//! Every change happens where the queue's lock is released ([`Locked`]), so no path that adds
//! or removes entries can leave them uncounted.

use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;

use super::{InFlight, Queued, State};
use crate::memory::MemoryBudget;

/// Bytes counted per entry: the larger of a waiting entry and an in-flight one (with its key).
pub(crate) const ENTRY_BYTES: usize = {
    let waiting = std::mem::size_of::<Queued>();
    let in_flight = std::mem::size_of::<InFlight>() + std::mem::size_of::<u64>();
    if waiting > in_flight {
        waiting
    } else {
        in_flight
    }
};

/// Entries charged at a time.
pub(crate) const STEP: usize = 16;

/// A queue's state, locked; on release the entries' charge is brought up to date.
pub(super) struct Locked<'a> {
    pub(super) state: MutexGuard<'a, State>,
    pub(super) budget: Option<&'a MemoryBudget>,
}

impl Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            recharge(&mut self.state, budget);
        }
    }
}

/// Entries the queue holds: waiting and in flight.
fn held(state: &State) -> usize {
    state.items.len() + state.acks.as_ref().map_or(0, |acks| acks.unacked.len())
}

/// Brings `state`'s charge in `budget` up to date with the entries it holds.
pub(super) fn recharge(state: &mut State, budget: &MemoryBudget) {
    let held = held(state);
    let charged = state.charged_entries;
    // Up as soon as the entries pass the charge; down once they are two steps below it, or
    // none are left.
    if held <= charged && held != 0 && charged < held + 2 * STEP {
        return;
    }
    let target = held.next_multiple_of(STEP);
    if target > charged {
        budget.hold_entries((target - charged) * ENTRY_BYTES);
    } else if target < charged {
        budget.release_entries((charged - target) * ENTRY_BYTES);
    }
    state.charged_entries = target;
}

/// Gives back everything `state` has charged (the queue is going away).
pub(super) fn release_all(state: &mut State, budget: &MemoryBudget) {
    budget.release_entries(state.charged_entries * ENTRY_BYTES);
    state.charged_entries = 0;
}
