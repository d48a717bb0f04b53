//! A third-party client and server for the data plane, so that its figures do not rest on
//! our own load generator alone: nginx (one worker) in each backend pod, `wrk` in the client
//! pod, over HTTP keep-alive and with a new connection per request (`Connection: close`).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::netns::Netns;

/// The HTTP port nginx listens on in each backend pod.
pub const HTTP_PORT: u16 = 8081;

/// An nginx serving `ok` on one address inside a pod, until dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `ns` on `addr` (one worker, no logs).
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("hpb-nginx-{}-{}", ns.name(), addr.port()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\nmaster_process off;\nuser root;\n\
                 pid {dir}/nginx.pid;\nerror_log {dir}/error.log error;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
                 client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n\
                 uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n\
                 server {{ listen {addr} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
                dir = dir.display()
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nginx", "-c"])
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Self { child, dir };
        // Ready once it accepts.
        for _ in 0..100 {
            if ns
                .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)))
                .is_ok()
            {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not start on {addr}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What `wrk` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WrkRate {
    /// HTTP requests per second, summed over the `wrk` processes.
    pub requests_per_second: f64,
    /// Requests that failed (socket errors and non-2xx answers).
    pub errors: u64,
}

/// HTTP requests per second from `ns` to every URL of `targets` at once (one `wrk` each,
/// `threads` threads and `connections` connections in all), keep-alive or a new
/// connection per request.
pub fn run(
    ns: &Netns,
    targets: &[SocketAddr],
    threads: usize,
    connections: usize,
    seconds: u64,
    new_connections: bool,
) -> anyhow::Result<WrkRate> {
    let each_threads = (threads / targets.len()).max(1);
    let each_conns = (connections / targets.len()).max(each_threads);
    let children: Vec<Child> = targets
        .iter()
        .map(|t| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns.name(), "wrk"])
                .arg(format!("-t{each_threads}"))
                .arg(format!("-c{each_conns}"))
                .arg(format!("-d{seconds}s"));
            if new_connections {
                cmd.args(["-H", "Connection: close"]);
            }
            cmd.arg(format!("http://{t}/"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting wrk")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = WrkRate::default();
    for child in children {
        let done = child.wait_with_output().context("waiting for wrk")?;
        let text = String::from_utf8_lossy(&done.stdout);
        if !done.status.success() {
            bail!(
                "wrk failed: {}{}",
                text,
                String::from_utf8_lossy(&done.stderr)
            );
        }
        let (rps, errors) =
            parse(&text).with_context(|| format!("reading wrk's report:\n{text}"))?;
        out.requests_per_second += rps;
        out.errors += errors;
    }
    Ok(out)
}

/// `Requests/sec:` and the error counts of a `wrk` report.
fn parse(text: &str) -> Option<(f64, u64)> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some((rps, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let text = "Running 2s test @ http://10.96.0.10:81/\n  2 threads and 8 connections\n\
                    Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                    40000 requests in 2.00s, 5.00MB read\n\
                    Socket errors: connect 0, read 3, write 0, timeout 2\n\
                    Non-2xx or 3xx responses: 1\n\
                    Requests/sec:  20000.50\nTransfer/sec:      2.50MB\n";
        assert_eq!(parse(text), Some((20000.5, 6)));
        assert_eq!(parse("nothing"), None);
    }
}
