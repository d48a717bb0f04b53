//! What the reliability and security tests share: probers that keep sending requests while
//! faults are injected and count what failed, reading the agent's metrics, and the suite's
//! summary file, which `cargo xtask test` prints at its end.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::{Scope, ScopedJoinHandle},
    time::{Duration, Instant},
};

/// Counts of one stream of requests.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub name: String,
    pub sent: u64,
    pub failed: u64,
    /// The first failures, each with when it happened (since the prober started).
    pub failures: Vec<String>,
}

/// What a prober saw, per stream.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub streams: Vec<Stream>,
}

impl Tally {
    pub fn sent(&self) -> u64 {
        self.streams.iter().map(|s| s.sent).sum()
    }

    pub fn failed(&self) -> u64 {
        self.streams.iter().map(|s| s.failed).sum()
    }

    /// Panics, listing the failures, when any request failed or when a stream sent fewer
    /// than `min_per_stream` requests (a prober that barely ran proves nothing).
    pub fn assert_clean(&self, min_per_stream: u64, context: &str) {
        let mut text = String::new();
        for s in &self.streams {
            let _ = writeln!(
                text,
                "  {}: {} sent, {} failed {:?}",
                s.name, s.sent, s.failed, s.failures
            );
        }
        assert!(
            self.failed() == 0 && self.streams.iter().all(|s| s.sent >= min_per_stream),
            "requests failed (or too few were sent, minimum {min_per_stream} per stream):\n{text}{context}"
        );
    }
}

/// How many failures of one stream are kept with their description.
const KEPT_FAILURES: usize = 10;

struct Shared {
    stop: AtomicBool,
    started: Instant,
    streams: Mutex<Vec<Stream>>,
}

impl Shared {
    fn streams(&self) -> std::sync::MutexGuard<'_, Vec<Stream>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Threads that each send one kind of request in a loop until stopped, counting failures.
///
/// Lives inside a [`std::thread::scope`], so that the checks may borrow the lab. Dropping it
/// (a panicking test included) stops the threads, so that the scope never waits forever.
pub struct Prober<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    shared: Arc<Shared>,
    handles: Vec<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope, 'env> Prober<'scope, 'env> {
    pub fn new(scope: &'scope Scope<'scope, 'env>) -> Self {
        Self {
            scope,
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                started: Instant::now(),
                streams: Mutex::new(Vec::new()),
            }),
            handles: Vec::new(),
        }
    }

    /// Runs `check` every `interval` on a thread of its own; an `Err` is a failed request.
    pub fn spawn(
        &mut self,
        name: &str,
        interval: Duration,
        mut check: impl FnMut() -> Result<(), String> + Send + 'scope,
    ) {
        let index = {
            let mut streams = self.shared.streams();
            streams.push(Stream {
                name: name.to_owned(),
                ..Stream::default()
            });
            streams.len() - 1
        };
        let shared = self.shared.clone();
        self.handles.push(self.scope.spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                let result = check();
                {
                    let mut streams = shared.streams();
                    let s = &mut streams[index];
                    s.sent += 1;
                    if let Err(e) = result {
                        s.failed += 1;
                        if s.failures.len() < KEPT_FAILURES {
                            s.failures
                                .push(format!("at {:.2?}: {e}", shared.started.elapsed()));
                        }
                    }
                }
                std::thread::sleep(interval);
            }
        }));
    }

    /// The counts so far.
    pub fn tally(&self) -> Tally {
        Tally {
            streams: self.shared.streams().clone(),
        }
    }

    /// Stops every thread and returns the counts.
    pub fn stop(mut self) -> Tally {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
        self.tally()
    }
}

impl Drop for Prober<'_, '_> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The value of one series in a Prometheus text exposition (`name{labels}` exactly as
/// printed), or `None` when it is not there.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `target/reliability/summary.txt` (under `$CARGO_TARGET_DIR` when set).
pub fn summary_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            // A test binary runs from <target>/<profile>/deps/.
            let exe = std::env::current_exe().expect("test binary path");
            exe.ancestors()
                .nth(3)
                .expect("the test binary is inside a target directory")
                .to_owned()
        },
        PathBuf::from,
    );
    target.join("reliability").join("summary.txt")
}

/// Appends one line to the suite's summary: the test, how many faults it injected, how many
/// requests it sent and how many of those failed.
///
/// # Panics
/// When the file cannot be written.
pub fn record(test: &str, faults: u64, sent: u64, failed: u64) {
    // The fast-path scenarios run once per forwarding mode: say which.
    let test = match crate::forwarding_under_test() {
        "auto" => test.to_owned(),
        other => format!("{test} [{other}]"),
    };
    let test = test.as_str();
    let path = summary_path();
    std::fs::create_dir_all(path.parent().expect("a directory"))
        .expect("creating the summary directory");
    let line = format!("{test:<52} faults {faults:>5}   requests {sent:>7}   failed {failed:>4}\n");
    // One write of one short line in append mode: lines of tests running in parallel do not
    // interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
