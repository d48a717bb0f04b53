//! Network namespaces owned by one test, removed when dropped.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace the tests create, so that a leftover is recognisable.
pub const PREFIX: &str = "hpt";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `hpt-<tag>-<pid>-<n>` with its loopback up.
    ///
    /// # Panics
    /// When `ip netns add` fails.
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>` and panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace (`ip netns exec`) and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Like [`Netns::exec`] but panics, with the command's stderr, when it fails.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Output {
        let out = self.exec(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `f` on a new thread that has entered this namespace. Sockets, netlink and
    /// interface lookups made by `f` all happen inside it; the calling thread is untouched.
    ///
    /// # Panics
    /// When the namespace cannot be entered, or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread();
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Moves the calling thread into this namespace for good. Use on threads the test owns.
    pub fn enter_current_thread(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: `file` is an open namespace file descriptor; setns only changes the network
        // namespace of the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
    }

    /// Connects `self` and `peer` with a veth pair, `self_if` here and `peer_if` there, both up.
    pub fn veth(&self, self_if: &str, peer: &Netns, peer_if: &str) {
        run_ok(Command::new("ip").args([
            "link", "add", self_if, "netns", &self.name, "type", "veth", "peer", "name", peer_if,
            "netns", &peer.name,
        ]));
        self.ip(&["link", "set", self_if, "up"]);
        peer.ip(&["link", "set", peer_if, "up"]);
    }

    /// Turns checksum offload off on an interface, so that receivers verify checksums in
    /// software (with offload on, veth marks packets as already checked).
    pub fn checksum_offload_off(&self, iface: &str) {
        self.exec_ok("ethtool", &["-K", iface, "tx", "off", "rx", "off"]);
    }
}

/// Waits until no IPv6 address in `namespaces` is tentative: until duplicate address
/// detection ends, a first connection through the interface can time out.
///
/// # Panics
/// When an address is still tentative after 10 s.
pub fn wait_no_tentative(namespaces: &[&Netns]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while namespaces.iter().any(|ns| {
        !ns.ip(&["-6", "addr", "show", "tentative"])
            .stdout
            .is_empty()
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "IPv6 addresses still tentative after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
