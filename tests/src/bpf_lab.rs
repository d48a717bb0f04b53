//! A namespace lab for the eBPF fast path, with echo servers that say who they are.
//!
//! ```text
//!   external 192.168.1.100 ──eth0── node-a 192.168.1.10 ──fab0── node-b
//!                                    │ veth per pod (p-<name>)     │ veth per pod
//!                          pods 10.244.1.0/24              pods 10.244.2.0/24
//! ```
//!
//! [`FastPathLab::enable_ipv6`] adds IPv6 alongside: node-a `fd00:1::10` and the external
//! client `fd00:1::100` on `eth0`, `fd00:2::/64` between the nodes, pods `fd00:244:1::/64`
//! and `fd00:244:2::/64` (each pod's /128 routed to its veth, its default route via
//! `fe80::1` on the node's end), the service CIDR `fd00:96::/112` and the load-balancer
//! range `2001:db8:51::/64` routed from the external client to node-a.
//!
//! Pods are wired the way Calico wires them: one veth per pod, the pod's /32 routed to it on
//! the node, and the pod's default route via a link-local gateway the node answers by proxy
//! ARP. The nodes route each other's pod CIDR; the external client routes the service CIDR
//! and the load-balancer range to node-a. There is no nftables in this lab: a packet the fast
//! path does not translate to a service address goes nowhere, so every successful exchange
//! with a service address was served by the fast path.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

pub const NODE_A_IP: &str = "192.168.1.10";
pub const EXTERNAL_IP: &str = "192.168.1.100";
pub const NODE_A_IP6: &str = "fd00:1::10";
pub const EXTERNAL_IP6: &str = "fd00:1::100";
/// The port every lab server listens on (TCP and UDP).
pub const SERVER_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Which node a pod runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

/// A pod: its own namespace with one veth to its node.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, once [`FastPathLab::enable_ipv6`] gave it one.
    pub ip6: Option<Ipv6Addr>,
    pub node: Node,
    /// The node-side interface name.
    pub veth: String,
}

/// An echo server in a pod: TCP answers each line with the pod's name, UDP each datagram.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The lab.
#[derive(Debug)]
pub struct FastPathLab {
    pub node: Netns,
    pub node_b: Netns,
    pub external: Netns,
    pub pods: Vec<Pod>,
    servers: Vec<Server>,
    next: [u8; 2],
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    ns.exec_ok("sysctl", &["-qw", &format!("{key}={value}")]);
}

impl FastPathLab {
    /// Builds the nodes and the external client (no pods yet). Checksum offload is off on
    /// every interface, so that receivers check checksums in software.
    pub fn new(tag: &str) -> Self {
        let node = Netns::new(&format!("{tag}-a"));
        let node_b = Netns::new(&format!("{tag}-b"));
        let external = Netns::new(&format!("{tag}-x"));
        external.veth("eth0", &node, "eth0");
        external.ip(&["addr", "add", &format!("{EXTERNAL_IP}/24"), "dev", "eth0"]);
        node.ip(&["addr", "add", &format!("{NODE_A_IP}/24"), "dev", "eth0"]);
        for range in ["10.96.0.0/12", "198.51.100.0/24"] {
            external.ip(&["route", "add", range, "via", NODE_A_IP]);
        }
        node.veth("fab0", &node_b, "fab0");
        node.ip(&["addr", "add", "192.168.2.1/24", "dev", "fab0"]);
        node_b.ip(&["addr", "add", "192.168.2.2/24", "dev", "fab0"]);
        node.ip(&["route", "add", "10.244.2.0/24", "via", "192.168.2.2"]);
        node_b.ip(&["route", "add", "default", "via", "192.168.2.1"]);
        // Proxy ARP answers for the pods' link-local gateway only when the node has a route
        // to it through another interface: the uplink is node-a's default route.
        node.ip(&["route", "add", "default", "via", EXTERNAL_IP]);
        for n in [&node, &node_b] {
            sysctl(n, "net.ipv4.ip_forward", "1");
            sysctl(n, "net.ipv4.conf.all.rp_filter", "0");
            sysctl(n, "net.ipv4.conf.default.rp_filter", "0");
        }
        external.checksum_offload_off("eth0");
        node.checksum_offload_off("eth0");
        node.checksum_offload_off("fab0");
        node_b.checksum_offload_off("fab0");
        Self {
            node,
            node_b,
            external,
            pods: Vec::new(),
            servers: Vec::new(),
            next: [10, 10],
        }
    }

    /// Adds a pod and returns its address.
    pub fn add_pod(&mut self, name: &str, on: Node) -> Ipv4Addr {
        let (subnet, slot) = match on {
            Node::A => (1, 0),
            Node::B => (2, 1),
        };
        let ip = Ipv4Addr::new(10, 244, subnet, self.next[slot]);
        self.next[slot] += 1;
        let ns = Netns::new(&format!("p{}", self.pods.len()));
        let veth = format!("p-{name}");
        let node = match on {
            Node::A => &self.node,
            Node::B => &self.node_b,
        };
        node.veth(&veth, &ns, "eth0");
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", &veth]);
        sysctl(node, &format!("net.ipv4.conf.{veth}.proxy_arp"), "1");
        // Answered at once, as Calico configures its interfaces (the default delays a proxy
        // answer by up to 80 jiffies, 320 ms here, on each first contact).
        sysctl(node, &format!("net.ipv4.neigh.{veth}.proxy_delay"), "0");
        node.checksum_offload_off(&veth);
        ns.checksum_offload_off("eth0");
        self.pods.push(Pod {
            name: name.to_owned(),
            ns,
            ip,
            ip6: None,
            node: on,
            veth,
        });
        ip
    }

    /// Adds IPv6 to the lab (see the module's picture) and to every pod added so far; call
    /// it after the pods are added and before they serve. Addresses skip duplicate address
    /// detection, so that they are usable at once.
    pub fn enable_ipv6(&mut self) {
        let add = |ns: &Netns, addr: &str, dev: &str| {
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        };
        add(&self.external, &format!("{EXTERNAL_IP6}/64"), "eth0");
        add(&self.node, &format!("{NODE_A_IP6}/64"), "eth0");
        for range in ["fd00:96::/112", "2001:db8:51::/64"] {
            self.external
                .ip(&["-6", "route", "add", range, "via", NODE_A_IP6]);
        }
        add(&self.node, "fd00:2::1/64", "fab0");
        add(&self.node_b, "fd00:2::2/64", "fab0");
        self.node
            .ip(&["-6", "route", "add", "fd00:244:2::/64", "via", "fd00:2::2"]);
        self.node_b
            .ip(&["-6", "route", "add", "default", "via", "fd00:2::1"]);
        for n in [&self.node, &self.node_b] {
            sysctl(n, "net.ipv6.conf.all.forwarding", "1");
        }
        for pod in &mut self.pods {
            let subnet = match pod.node {
                Node::A => 1,
                Node::B => 2,
            };
            let ip6 = Ipv6Addr::new(
                0xfd00,
                0x244,
                subnet,
                0,
                0,
                0,
                0,
                u16::from(pod.ip.octets()[3]),
            );
            let node = match pod.node {
                Node::A => &self.node,
                Node::B => &self.node_b,
            };
            // Static link-local addresses on both ends: the gateway the pod routes through,
            // usable without waiting for duplicate address detection.
            add(node, "fe80::1/64", &pod.veth);
            add(&pod.ns, "fe80::2/64", "eth0");
            add(&pod.ns, &format!("{ip6}/128"), "eth0");
            pod.ns.ip(&[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ]);
            node.ip(&[
                "-6",
                "route",
                "add",
                &format!("{ip6}/128"),
                "dev",
                &pod.veth,
            ]);
            pod.ip6 = Some(ip6);
        }
        // The interfaces' automatic link-local addresses go through duplicate address
        // detection; until it ends, the nodes do not forward between them reliably (seen
        // as a first connection across fab0 timing out). Wait for it, briefly.
        let namespaces: Vec<&Netns> = [&self.node, &self.node_b, &self.external]
            .into_iter()
            .chain(self.pods.iter().map(|p| &p.ns))
            .collect();
        crate::netns::wait_no_tentative(&namespaces);
    }

    /// Removes a pod (its namespace and veth).
    pub fn remove_pod(&mut self, name: &str) {
        self.pods.retain(|p| p.name != name);
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts the pod's echo servers on [`SERVER_PORT`], on each of its addresses.
    pub fn serve(&mut self, name: &str) {
        let pod = self.pod(name);
        let mut addrs: Vec<IpAddr> = vec![pod.ip.into()];
        addrs.extend(pod.ip6.map(IpAddr::from));
        for ip in addrs {
            self.serve_on(name, ip);
        }
    }

    fn serve_on(&mut self, name: &str, ip: IpAddr) {
        let pod = self.pod(name);
        let stop = Arc::new(AtomicBool::new(false));
        let addr = SocketAddr::new(ip, SERVER_PORT);
        let (listener, udp) = pod.ns.run(|| {
            let l = TcpListener::bind(addr).expect("binding the TCP server");
            l.set_nonblocking(true).unwrap();
            let u = UdpSocket::bind(addr).expect("binding the UDP server");
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            (l, u)
        });
        let mut threads = Vec::new();
        let (n, s) = (name.to_owned(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (n, s) = (n.clone(), s.clone());
                        conns.push(std::thread::spawn(move || echo_tcp(stream, &n, &s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        }));
        let (n, s) = (name.to_owned(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(n.as_bytes(), peer);
                }
            }
        }));
        self.servers.push(Server { stop, threads });
    }
}

fn echo_tcp(stream: TcpStream, name: &str, stop: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                line.clear();
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

/// A TCP connection from a namespace, kept open across requests.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    /// Connects from `ns` (optionally from a fixed local port).
    pub fn open(ns: &Netns, local_port: Option<u16>, dst: SocketAddr) -> Result<Self, String> {
        ns.run(|| {
            let stream = match local_port {
                None => TcpStream::connect_timeout(&dst, TIMEOUT).map_err(|e| e.to_string())?,
                Some(p) => connect_from(p, dst)?,
            };
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let writer = stream.try_clone().unwrap();
            Ok(Self {
                reader: BufReader::new(stream),
                writer,
            })
        })
    }

    /// Sends a line and returns the name of the pod that answered.
    pub fn request(&mut self) -> Result<String, String> {
        self.writer.write_all(b"who\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        Ok(line.trim().to_owned())
    }
}

fn connect_from(port: u16, dst: SocketAddr) -> Result<TcpStream, String> {
    // std has no bind-then-connect: use a raw socket for the fixed source port.
    // SAFETY: plain socket calls on a descriptor we own; results checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            4,
        );
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
        local.sin_port = port.to_be();
        if libc::bind(fd, (&raw const local).cast(), 16) != 0 {
            let e = std::io::Error::last_os_error().to_string();
            libc::close(fd);
            return Err(e);
        }
        let SocketAddr::V4(d) = dst else {
            return Err("IPv4 only".into());
        };
        let mut remote: libc::sockaddr_in = std::mem::zeroed();
        remote.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
        remote.sin_port = d.port().to_be();
        remote.sin_addr.s_addr = u32::from_ne_bytes(d.ip().octets());
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            u32::try_from(size_of::<libc::timeval>()).unwrap(),
        );
        if libc::connect(fd, (&raw const remote).cast(), 16) != 0 {
            let e = std::io::Error::last_os_error().to_string();
            libc::close(fd);
            return Err(e);
        }
        Ok(<TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd))
    }
}

/// One TCP request on a fresh connection: who answered.
pub fn tcp_once(ns: &Netns, local_port: Option<u16>, dst: SocketAddr) -> Result<String, String> {
    Connection::open(ns, local_port, dst)?.request()
}

/// A UDP socket in a namespace, for a flow of several datagrams.
#[derive(Debug)]
pub struct UdpFlow {
    sock: UdpSocket,
    dst: SocketAddr,
}

impl UdpFlow {
    pub fn open(ns: &Netns, local_port: u16, dst: SocketAddr) -> Self {
        let sock = ns.run(|| {
            let any: IpAddr = if dst.is_ipv6() {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            let s = UdpSocket::bind((any, local_port)).expect("binding the UDP client");
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        });
        Self { sock, dst }
    }

    /// Sends a datagram; returns who answered, checking the answer came from the address the
    /// datagram was sent to. Retries a few times (the first datagram may wait for ARP).
    pub fn request(&self) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..4 {
            self.sock
                .send_to(b"who", self.dst)
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 256];
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != self.dst {
                        return Err(format!("answer from {from}, not {}", self.dst));
                    }
                    return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}
