//! Load for the data-plane benchmark: lean servers in backend pods and closed-loop client
//! threads that keep every core busy.
//!
//! Unlike the test servers in [`crate::traffic`], nothing here starts a thread per
//! connection: a few threads per pod accept and answer, so that the path under test, not
//! the servers, decides the rate.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::netns::Netns;

/// How long a blocked server call waits before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

fn set_timeout(fd: i32, option: i32, timeout: Duration) {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(1),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: `tv` outlives the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const tv).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).expect("small"),
        );
    }
}

/// Closes with a reset: no `TIME_WAIT`, so the client's ports never run out.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` outlives the call and its size is passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small"),
        );
    }
}

/// TCP and UDP servers in some pods, until dropped.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Bound and never read: datagrams to them are counted and dropped.
    sinks: Vec<UdpSocket>,
}

impl Servers {
    /// Serves TCP and UDP on `addr` inside `ns`, with `threads` threads for each.
    ///
    /// # Panics
    /// When a port cannot be bound.
    pub fn serve(&mut self, ns: &Netns, addr: SocketAddr, threads: usize) {
        let (tcp, udp) = ns.run(|| {
            let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding tcp {addr}: {e}"));
            let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
            (tcp, udp)
        });
        set_timeout(tcp.as_raw_fd(), libc::SO_RCVTIMEO, POLL);
        udp.set_read_timeout(Some(POLL)).expect("setting a timeout");
        let tcp = Arc::new(tcp);
        let udp = Arc::new(udp);
        for _ in 0..threads {
            let (tcp, stop) = (tcp.clone(), self.stop.clone());
            self.threads
                .push(std::thread::spawn(move || serve_tcp(&tcp, &stop)));
            let (udp, stop) = (udp.clone(), self.stop.clone());
            self.threads
                .push(std::thread::spawn(move || serve_udp(&udp, &stop)));
        }
    }

    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            sinks: Vec::new(),
        }
    }

    /// A UDP port inside `ns` that receives and never reads (its small buffer fills at once
    /// and the kernel drops what follows, after the whole receive path).
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub fn sink(&mut self, ns: &Netns, addr: SocketAddr) {
        let sock =
            ns.run(|| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding udp {addr}: {e}")));
        let size: libc::c_int = 4096;
        // SAFETY: `size` outlives the call and its size is passed.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small"),
            );
        }
        self.sinks.push(sock);
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Answers every request on a connection until the client closes it (one request for the
/// connection-rate load, many for request/response).
fn serve_tcp(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        while !stop.load(Ordering::Relaxed) {
            match conn.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if conn.write_all(b"ok\n").is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

fn serve_udp(sock: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    }
}

/// A measured rate: the median of the windows (and of the rounds merged into it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rate {
    pub per_second: f64,
    pub completed: u64,
    pub failed: u64,
    pub seconds: f64,
    /// CPU time of the whole machine per operation, in microseconds (the median window's).
    pub cpu_us_per_op: f64,
    /// Every window's rate, in the order measured.
    pub samples: Vec<f64>,
    /// Every window's CPU per operation.
    pub cpu_samples: Vec<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}

impl Rate {
    /// Adds another round's windows; the figures become the median of all of them.
    pub fn merge(&mut self, other: &Self) {
        self.samples.extend(&other.samples);
        self.cpu_samples.extend(&other.cpu_samples);
        self.completed += other.completed;
        self.failed += other.failed;
        self.seconds += other.seconds;
        self.per_second = median(&self.samples);
        self.cpu_us_per_op = median(&self.cpu_samples);
    }
}

/// Busy and total CPU time of the machine so far, in clock ticks (`/proc/stat`).
fn cpu_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Clock ticks per second (`USER_HZ`).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "a small constant")]
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// What a client thread does, once per operation; `true` on success.
type Op = fn(&mut Client) -> bool;

/// A client thread's state.
pub struct Client {
    dst: SocketAddr,
    udp: Option<UdpSocket>,
    /// The open connection of request/response.
    tcp: Option<TcpStream>,
    buf: [u8; 512],
}

/// New TCP connections: connect, one request and its reply, close with a reset.
fn tcp_connection(c: &mut Client) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&c.dst, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let ok = s.write_all(b"x\n").is_ok() && matches!(s.read(&mut c.buf), Ok(n) if n > 0);
    reset_on_close(&s);
    ok
}

/// One request and its reply on the thread's open connection (reconnecting if it broke).
fn tcp_request(c: &mut Client) -> bool {
    if c.tcp.is_none() {
        let Ok(s) = TcpStream::connect_timeout(&c.dst, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        c.tcp = Some(s);
    }
    let s = c.tcp.as_mut().expect("connected above");
    let ok = s.write_all(b"x\n").is_ok() && matches!(s.read(&mut c.buf), Ok(n) if n > 0);
    if !ok {
        c.tcp = None;
    }
    ok
}

/// One UDP request and its reply on the thread's socket (one flow per thread).
fn udp_request(c: &mut Client) -> bool {
    let sock = c.udp.as_ref().expect("a UDP client has a socket");
    sock.send(b"x").is_ok() && sock.recv(&mut c.buf).is_ok()
}

/// How a driven load is measured: a warm-up, then `windows` windows of `window` each; the
/// median window counts.
#[derive(Clone, Copy, Debug)]
pub struct Windows {
    pub warmup: Duration,
    pub window: Duration,
    pub windows: usize,
}

/// What the client threads do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// A new TCP connection per request.
    TcpConnections,
    /// Requests and replies on one open TCP connection per thread.
    TcpRequests,
    /// Requests and replies on one UDP socket (flow) per thread.
    UdpRequests,
}

/// Runs `load` from `threads` client threads inside `ns`, thread `i` sending to
/// `dsts[i % len]`; the median window.
///
/// # Panics
/// When `dsts` is empty.
pub fn drive(ns: &Netns, dsts: &[SocketAddr], threads: usize, w: Windows, load: Load) -> Rate {
    assert!(!dsts.is_empty(), "a load needs a destination");
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let udp = load == Load::UdpRequests;
    let op: Op = match load {
        Load::TcpConnections => tcp_connection,
        Load::TcpRequests => tcp_request,
        Load::UdpRequests => udp_request,
    };
    let samples = std::thread::scope(|s| {
        for i in 0..threads {
            let dst = dsts[i % dsts.len()];
            let (stop, done, failed) = (&stop, &done, &failed);
            s.spawn(move || {
                ns.enter_current_thread();
                let udp = udp.then(|| {
                    let s = UdpSocket::bind("0.0.0.0:0").expect("binding a UDP client");
                    s.connect(dst).expect("connecting a UDP client");
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .expect("a timeout");
                    s
                });
                let mut client = Client {
                    dst,
                    udp,
                    tcp: None,
                    buf: [0; 512],
                };
                while !stop.load(Ordering::Relaxed) {
                    if op(&mut client) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(w.warmup);
        let sample = || {
            (
                done.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                Instant::now(),
                cpu_ticks().0,
            )
        };
        let mut samples = vec![sample()];
        for _ in 0..w.windows.max(1) {
            std::thread::sleep(w.window);
            samples.push(sample());
        }
        stop.store(true, Ordering::Relaxed);
        samples
    });
    let hz = ticks_per_second();
    let windows: Vec<Rate> = samples
        .windows(2)
        .map(|p| {
            let ((d0, f0, t0, c0), (d1, f1, t1, c1)) = (p[0], p[1]);
            let seconds = (t1 - t0).as_secs_f64();
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let (per_second, cpu_us_per_op) = (
                (d1 - d0) as f64 / seconds,
                (c1 - c0) as f64 / hz * 1e6 / (d1 - d0).max(1) as f64,
            );
            Rate {
                per_second,
                completed: d1 - d0,
                failed: f1 - f0,
                seconds,
                cpu_us_per_op,
                samples: vec![per_second],
                cpu_samples: vec![cpu_us_per_op],
            }
        })
        .collect();
    let mut out = Rate::default();
    for r in &windows {
        out.merge(r);
    }
    out
}

/// New TCP connections per second from `threads` client threads inside `ns`.
pub fn tcp_connections(ns: &Netns, dst: SocketAddr, threads: usize, w: Windows) -> Rate {
    drive(ns, &[dst], threads, w, Load::TcpConnections)
}

/// UDP requests and replies per second, one socket (one flow) per client thread.
pub fn udp_requests(ns: &Netns, dst: SocketAddr, threads: usize, w: Windows) -> Rate {
    drive(ns, &[dst], threads, w, Load::UdpRequests)
}
