//! Progress on stderr: an indicatif bar (samples, model tokens/s, ETA) on a terminal,
//! plain periodic lines otherwise (logs of batch jobs), nothing with --quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    done: u64,
    tokens: u64,
    start: Instant,
    last_line: Instant,
}

const PLAIN_EVERY: Duration = Duration::from_secs(30);

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples {msg} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            plain: !quiet && !terminal,
            total,
            done: 0,
            tokens: 0,
            start: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    /// Prints a line above the bar (or plainly).
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn advance(&mut self, tokens: u64) {
        self.done += 1;
        self.tokens += tokens;
        let rate = self.tokens_per_s();
        if let Some(b) = &self.bar {
            b.set_message(format!("{rate:.0} tok/s"));
            b.inc(1);
        } else if self.plain && (self.last_line.elapsed() >= PLAIN_EVERY || self.done == self.total)
        {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            let eta = if self.done > 0 {
                secs / self.done as f64 * (self.total.saturating_sub(self.done)) as f64
            } else {
                0.0
            };
            eprintln!(
                "gateau: {}/{} samples, {rate:.0} tok/s, {secs:.0} s elapsed, ETA {eta:.0} s",
                self.done, self.total
            );
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
