//! Test servers and clients: every reply names the backend that served it and the peer
//! address it saw, so a test can tell where a connection went and whether it was
//! masqueraded.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

/// How long a client waits before calling a connection dropped.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// What one request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served by `backend`, which saw the request come from `peer`.
    Reply { backend: String, peer: SocketAddr },
    /// Actively refused (TCP RST or ICMP unreachable): what nftables' `reject` looks like.
    Refused,
    /// Nothing came back: what `drop` looks like.
    Timeout,
    /// Anything else.
    Error(String),
}

impl Outcome {
    /// The backend's name; panics with the outcome otherwise.
    pub fn backend(&self) -> &str {
        match self {
            Self::Reply { backend, .. } => backend,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The source address the backend saw.
    pub fn peer(&self) -> SocketAddr {
        match self {
            Self::Reply { peer, .. } => *peer,
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

fn parse_reply(line: &str) -> Outcome {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|p| p.parse().ok())) {
        (Some(backend), Some(peer)) => Outcome::Reply {
            backend: backend.to_owned(),
            peer,
        },
        _ => Outcome::Error(format!("bad reply {line:?}")),
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::HostUnreachable => {
            Outcome::Refused
        }
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

/// TCP and UDP servers answering on one port inside a namespace, until dropped.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves `name` on `addr` (TCP and UDP) inside `ns`.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub fn start(ns: &Netns, name: &str, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = ns.run(|| {
            let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding tcp {addr}: {e}"));
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            (tcp, udp)
        });
        let mut threads = Vec::new();
        {
            let (stop, name) = (stop.clone(), name.to_owned());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((conn, peer)) => {
                            let name = name.clone();
                            let stop = stop.clone();
                            std::thread::spawn(move || serve_tcp(conn, peer, &name, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        {
            let (stop, name) = (stop.clone(), name.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(format!("{name} {peer}\n").as_bytes(), peer);
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

/// Answers every line on a connection with the server's name and the peer, until EOF.
fn serve_tcp(conn: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer
                    .write_all(format!("{name} {peer}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a series of exchanges got: the backends that answered, and the peer addresses
/// they saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub backends: BTreeSet<String>,
    pub peers: BTreeSet<String>,
}

/// `n` TCP (or UDP) exchanges from inside `from` to `dst`, each on a new connection (or
/// socket); the first that gets no reply is the error.
///
/// # Errors
/// The first exchange without a reply, with its outcome.
///
/// # Panics
/// When `dst` is not a socket address.
pub fn exchanges(from: &Netns, dst: &str, udp: bool, n: usize) -> Result<Seen, String> {
    let to: SocketAddr = dst
        .parse()
        .unwrap_or_else(|e| panic!("{dst} is not a socket address: {e}"));
    let mut seen = Seen {
        backends: BTreeSet::new(),
        peers: BTreeSet::new(),
    };
    for i in 0..n {
        match if udp {
            self::udp(from, to)
        } else {
            tcp(from, to)
        } {
            Outcome::Reply { backend, peer } => {
                seen.backends.insert(backend);
                seen.peers.insert(peer.ip().to_string());
            }
            other => {
                let proto = if udp { "udp" } else { "tcp" };
                return Err(format!("{dst}/{proto} exchange {i}: {other:?}"));
            }
        }
    }
    Ok(seen)
}

/// One TCP request from inside `ns` to `dst`.
pub fn tcp(ns: &Netns, dst: SocketAddr) -> Outcome {
    ns.run(|| {
        let mut conn = match TcpStream::connect_timeout(&dst, TIMEOUT) {
            Ok(c) => c,
            Err(e) => return classify(&e),
        };
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        if let Err(e) = conn.write_all(b"hello\n") {
            return classify(&e);
        }
        let mut reply = String::new();
        match BufReader::new(&mut conn).read_line(&mut reply) {
            Ok(0) => Outcome::Error("connection closed without a reply".into()),
            Ok(_) => parse_reply(&reply),
            Err(e) => classify(&e),
        }
    })
}

/// One UDP request from inside `ns` to `dst` (a connected socket, so that an ICMP
/// unreachable surfaces as `Refused`).
pub fn udp(ns: &Netns, dst: SocketAddr) -> Outcome {
    ns.run(|| {
        let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .unwrap();
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        if let Err(e) = sock.connect(dst).and_then(|()| sock.send(b"hello")) {
            return classify(&e);
        }
        let mut buf = [0u8; 512];
        match sock.recv(&mut buf) {
            Ok(n) => parse_reply(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => classify(&e),
        }
    })
}

/// A TCP connection kept open across steps of a test.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Opens a connection from inside `ns`.
    ///
    /// # Panics
    /// When the connection cannot be made.
    pub fn open(ns: &Netns, dst: SocketAddr) -> Self {
        let conn = ns
            .run(|| TcpStream::connect_timeout(&dst, TIMEOUT))
            .unwrap_or_else(|e| panic!("connecting to {dst}: {e}"));
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self {
            reader: BufReader::new(conn),
        }
    }

    /// Sends a line and reads the reply on the same connection.
    pub fn request(&mut self) -> Outcome {
        if let Err(e) = self.reader.get_mut().write_all(b"again\n") {
            return classify(&e);
        }
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => Outcome::Error("connection closed".into()),
            Ok(_) => parse_reply(&reply),
            Err(e) => classify(&e),
        }
    }
}

/// A plain HTTP/1.0 GET from inside `ns`; the status code and body.
///
/// # Panics
/// When the server does not answer with an HTTP response.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String), Outcome> {
    ns.run(|| {
        let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| classify(&e))?;
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .map_err(|e| classify(&e))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut conn, &mut text).map_err(|e| classify(&e))?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    })
}
