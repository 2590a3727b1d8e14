//! The progress bar a scenario shows while it runs. It draws on standard error, and only when
//! that is a terminal, so `--json` output and scripts see nothing of it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A counted step of a scenario (messages received, connections opened).
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar counting to `total`, labelled `label`.
    pub fn new(total: u64, label: impl Into<String>) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:>14} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.into());
        Self { bar }
    }

    /// Sets the count reached so far. Cheap enough to call for every message when the caller
    /// only calls it every few hundred (the bar redraws at most 20 times a second).
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
