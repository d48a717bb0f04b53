//! Running one command inside a namespace and measuring it: wall time (from spawn to the
//! kernel reporting its exit), peak memory, an optional timeout.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// How a measured command ended.
#[derive(Clone, Debug)]
pub struct Finished {
    pub wall: Duration,
    /// `None` when it was killed at the timeout.
    pub exit_code: Option<i32>,
    /// Peak resident memory of the process and the children it waited for (the kernel's
    /// `ru_maxrss`: the largest of them, not their sum), KiB.
    pub max_rss_kib: u64,
    /// The process's own peak (`VmHWM`), KiB, when it was polled.
    pub own_peak_kib: Option<u64>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn timed_out(&self) -> bool {
        self.exit_code.is_none()
    }

    /// Fails, with its stderr, unless it exited with 0.
    pub fn ok(self, what: &str) -> anyhow::Result<Self> {
        match self.exit_code {
            Some(0) => Ok(self),
            Some(code) => bail!("{what} exited with {code}: {}", self.stderr.trim()),
            None => bail!("{what} timed out after {:.1?}", self.wall),
        }
    }
}

/// Options of one measured run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure {
    pub timeout: Option<Duration>,
    /// Poll `/proc/<pid>/status` for `VmHWM` while it runs.
    pub poll_peak: bool,
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What `wait4` reported.
struct Exit {
    at: Instant,
    status: i32,
    max_rss_kib: u64,
}

fn wait4(pid: i32) -> std::io::Result<Exit> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our own child.
        let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if rc == pid {
            return Ok(Exit {
                at: Instant::now(),
                status,
                max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs `cmd` inside `ns` (spawned from a thread that entered it, so there is no `ip netns
/// exec` in between), feeding it `stdin` when given.
pub fn run(
    ns: &Netns,
    mut cmd: Command,
    stdin: Option<&Path>,
    m: Measure,
) -> anyhow::Result<Finished> {
    let dir = std::env::temp_dir();
    let tag = format!(
        "hpb-bench-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    let stdout = std::fs::File::create(&out_path).context("creating a capture file")?;
    let stderr = std::fs::File::create(&err_path).context("creating a capture file")?;
    cmd.stdout(stdout).stderr(stderr);
    match stdin {
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            cmd.stdin(f);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let program = cmd.get_program().display().to_string();
    let started = Instant::now();
    let child = ns
        .run(move || cmd.spawn())
        .with_context(|| format!("starting {program}"))?;
    let pid = i32::try_from(child.id()).context("pid")?;
    // The child is reaped by `wait4` below, never through `Child`.
    drop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait4(pid));
    });
    let mut own_peak = None;
    let mut killed = false;
    let exit = loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(exit) => break exit.context("waiting for the child")?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the waiter thread died"),
        }
        if m.poll_peak {
            // Monotonic: the last value read before the exit is the peak, unless the process
            // grew in its last few milliseconds.
            if let Some(v) = vm_hwm_kib(pid) {
                own_peak = Some(v);
            }
        }
        if let Some(timeout) = m.timeout
            && !killed
            && started.elapsed() > timeout
        {
            // SAFETY: kill has no memory effects; `pid` is our child and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
    };
    let read = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        text
    };
    let exited = libc::WIFEXITED(exit.status);
    Ok(Finished {
        wall: exit.at - started,
        exit_code: if killed {
            None
        } else if exited {
            Some(libc::WEXITSTATUS(exit.status))
        } else {
            Some(128 + libc::WTERMSIG(exit.status))
        },
        max_rss_kib: exit.max_rss_kib,
        own_peak_kib: own_peak,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// `nft -f FILE` inside `ns`.
pub fn nft_file(ns: &Netns, file: &Path, timeout: Option<Duration>) -> anyhow::Result<Finished> {
    let mut cmd = Command::new("nft");
    cmd.arg("-f").arg(file);
    run(
        ns,
        cmd,
        None,
        Measure {
            timeout,
            poll_peak: false,
        },
    )
}
