//! Progress bars with rate and ETA for long work. Hidden when stderr is not a terminal
//! or when `-q` was given, so logs and CI output stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence all progress bars (the CLI's `-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn target() -> ProgressDrawTarget {
    if QUIET.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// A bar over a known number of items (`unit` e.g. "lines"), with rate and ETA.
pub fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), target());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg:>10}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, ETA {{eta}})"
        ))
        .expect("static template"),
    );
    pb.set_message(what.to_string());
    pb
}

/// A spinner for work of unknown size (streaming input), with a count and a rate.
pub fn spinner(what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg}} [{{elapsed_precise}}] {{human_pos}} {unit} ({{per_sec}})"
        ))
        .expect("static template"),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}
