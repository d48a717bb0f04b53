//! [`Conntrack`] on the real kernel: ctnetlink over a `NETLINK_NETFILTER` socket.
//!
//! Every call opens its own socket, so it works in the network namespace of the calling thread
//! at that moment, and no half-read answer of an earlier call can ever be mistaken for this
//! one's. Opening a socket costs two system calls; a sync makes a handful of calls at most.

use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use super::{
    Conntrack, ConntrackError, Flow, FlowFilter, Request,
    wire::{self, Entry, Malformed, Message},
};
use crate::model::IpFamily;

/// How long one receive may wait for the kernel; the kernel answers a dump or a delete in
/// well under a millisecond, so this only bounds a hung call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a dump is restarted after the kernel reports it interrupted or lost messages.
const DUMP_ATTEMPTS: u32 = 5;

/// Deletes sent per datagram before reading their acknowledgements. Each acknowledgement is
/// its own socket buffer in the kernel (about a kilobyte of receive-buffer accounting); 64 of
/// them stay far below the default receive buffer, so none can be dropped.
const DELETE_BATCH: usize = 64;

/// The largest datagram the kernel sends us: dumps fill buffers of at most 32 KiB.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The kernel's conntrack table, in the network namespace of the calling thread.
#[derive(Clone, Debug)]
pub struct NetlinkConntrack {
    timeout: Duration,
}

impl NetlinkConntrack {
    pub fn new() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Waits at most `timeout` for each answer of the kernel.
    pub fn with_timeout(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// Every entry of a family with this protocol, restarting the dump when the kernel says
    /// it may have skipped entries.
    fn dump(&self, family: IpFamily, protocol: u8) -> Result<Vec<Entry>, ConntrackError> {
        let request = Request::Dump { family, protocol };
        for _ in 0..DUMP_ATTEMPTS {
            match self.dump_once(family, request)? {
                Dump::Complete(mut entries) => {
                    // The kernel filters on the family only (protocol filters need kernel
                    // 5.9's CTA_FILTER); dropping other protocols here works everywhere.
                    entries.retain(|e| e.flow.protocol() == protocol && e.flow.family() == family);
                    return Ok(entries);
                }
                Dump::Interrupted => {
                    tracing::debug!(%request, "conntrack dump interrupted, restarting");
                }
            }
        }
        Err(ConntrackError::DumpInterrupted {
            request,
            attempts: DUMP_ATTEMPTS,
        })
    }

    fn dump_once(&self, family: IpFamily, request: Request) -> Result<Dump, ConntrackError> {
        const SEQ: u32 = 1;
        let mut socket = Socket::open(self.timeout)?;
        socket.send(&wire::dump_request(SEQ, family), request)?;
        let mut entries = Vec::new();
        let mut interrupted = false;
        loop {
            let messages = match socket.receive(request) {
                Ok(messages) => messages,
                // The receive buffer overflowed and messages were lost: start again.
                Err(ConntrackError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    return Ok(Dump::Interrupted);
                }
                Err(e) => return Err(e),
            };
            for message in messages {
                if message.seq() != SEQ {
                    continue;
                }
                match message {
                    Message::Entry {
                        entry,
                        interrupted: i,
                        ..
                    } => {
                        interrupted |= i;
                        entries.push(entry);
                    }
                    Message::Done {
                        errno: 0,
                        interrupted: i,
                        ..
                    } => {
                        return Ok(if interrupted || i {
                            Dump::Interrupted
                        } else {
                            Dump::Complete(entries)
                        });
                    }
                    // An acknowledgement: not asked for, nothing to learn from it.
                    Message::Error { errno: 0, .. } | Message::Ignored { .. } => {}
                    Message::Done { errno, .. } | Message::Error { errno, .. }
                        if retryable(errno) =>
                    {
                        return Ok(Dump::Interrupted);
                    }
                    Message::Done { errno, .. } | Message::Error { errno, .. } => {
                        return Err(ConntrackError::Refused {
                            request,
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    Message::Overrun { .. } => return Ok(Dump::Interrupted),
                }
            }
        }
    }

    /// Deletes these entries, each by its original tuple, id and zone; returns how many the
    /// kernel deleted (those already gone answer `ENOENT` and are not counted).
    fn delete_entries(&self, entries: &[Entry]) -> Result<usize, ConntrackError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut socket = Socket::open(self.timeout)?;
        let mut deleted = 0;
        for (batch_index, batch) in entries.chunks(DELETE_BATCH).enumerate() {
            // Sequence numbers 1.., unique within this socket.
            let first = u32::try_from(batch_index * DELETE_BATCH + 1)
                .expect("fewer than 4 billion deletes in one call");
            let mut datagram = Vec::with_capacity(batch.len() * 96);
            for (seq, entry) in (first..).zip(batch) {
                datagram.extend(wire::delete_request(seq, entry));
            }
            let first_request = Request::Delete {
                flow: batch[0].flow,
            };
            socket.send(&datagram, first_request)?;

            let mut acks = BatchAcks::new(first, batch.len());
            while !acks.complete() {
                for message in socket.receive(first_request)? {
                    acks.record(&message)
                        .map_err(|(i, errno)| ConntrackError::Refused {
                            request: Request::Delete {
                                flow: batch[i].flow,
                            },
                            source: io::Error::from_raw_os_error(errno),
                        })?;
                }
            }
            deleted += acks.deleted;
        }
        Ok(deleted)
    }
}

impl Default for NetlinkConntrack {
    fn default() -> Self {
        Self::new()
    }
}

impl Conntrack for NetlinkConntrack {
    fn flows(&mut self, family: IpFamily, protocol: u8) -> Result<Vec<Flow>, ConntrackError> {
        Ok(self
            .dump(family, protocol)?
            .into_iter()
            .map(|e| e.flow)
            .collect())
    }

    /// Dumps each family and protocol the filters can match, then deletes the matching
    /// entries by their original tuple and id: an entry replaced between the dump and the
    /// delete is left alone.
    fn delete(&mut self, filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
        let scopes: BTreeSet<(IpFamily, u8)> = filters
            .iter()
            .flat_map(|f| f.families().into_iter().map(|family| (family, f.protocol)))
            .collect();
        let mut deleted = 0;
        for (family, protocol) in scopes {
            let doomed: Vec<Entry> = self
                .dump(family, protocol)?
                .into_iter()
                .filter(|e| filters.iter().any(|f| f.matches(&e.flow)))
                .collect();
            deleted += self.delete_entries(&doomed)?;
        }
        Ok(deleted)
    }
}

/// The kernel's answers to one batch of deletes with consecutive sequence numbers.
struct BatchAcks {
    first: u32,
    answered: Vec<bool>,
    pending: usize,
    deleted: usize,
}

impl BatchAcks {
    fn new(first: u32, len: usize) -> Self {
        Self {
            first,
            answered: vec![false; len],
            pending: len,
            deleted: 0,
        }
    }

    fn complete(&self) -> bool {
        self.pending == 0
    }

    /// Takes one message into account. Messages that answer nothing of this batch (or answer
    /// it twice) are ignored; a refusal other than `ENOENT` is returned with the index of the
    /// refused delete.
    fn record(&mut self, message: &Message) -> Result<(), (usize, i32)> {
        let Message::Error { seq, errno } = *message else {
            return Ok(());
        };
        let Some(i) = seq
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| self.answered.get(*i) == Some(&false))
        else {
            return Ok(());
        };
        self.answered[i] = true;
        self.pending -= 1;
        match errno {
            0 => self.deleted += 1,
            // Gone already: it timed out, or was replaced by a new entry with the same tuple
            // (whose id no longer matches), which must not be deleted.
            libc::ENOENT => {}
            errno => return Err((i, errno)),
        }
        Ok(())
    }
}

enum Dump {
    Complete(Vec<Entry>),
    /// The kernel says entries may have been missed; the caller starts again.
    Interrupted,
}

/// Errors after which a fresh dump is likely to succeed.
fn retryable(errno: i32) -> bool {
    matches!(
        errno,
        libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ENOBUFS
    )
}

/// A `NETLINK_NETFILTER` socket with a receive timeout.
struct Socket {
    fd: OwnedFd,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Socket {
    fn open(timeout: Duration) -> Result<Self, ConntrackError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(ConntrackError::Open {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .map_err(|source| ConntrackError::Open { source })?;
        // Acknowledgements without a copy of the request: smaller, and we never read it.
        // Best effort (Linux 4.3+): without it acknowledgements are just larger.
        let _ = setsockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, &1i32);
        Ok(Self {
            fd,
            timeout,
            buf: vec![0; RECEIVE_BUFFER],
        })
    }

    fn send(&self, datagram: &[u8], request: Request) -> Result<(), ConntrackError> {
        // SAFETY: an all-zero sockaddr_nl is valid; pid 0 addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).expect("AF_NETLINK");
        loop {
            // SAFETY: the buffer and address are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    datagram.as_ptr().cast(),
                    datagram.len(),
                    0,
                    (&raw const kernel).cast(),
                    socklen::<libc::sockaddr_nl>(),
                )
            };
            if sent >= 0 {
                return if usize::try_from(sent).ok() == Some(datagram.len()) {
                    Ok(())
                } else {
                    Err(ConntrackError::Io {
                        operation: "short send",
                        request,
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    })
                };
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(ConntrackError::Io {
                    operation: "send",
                    request,
                    source: err,
                });
            }
        }
    }

    /// Receives one datagram and parses its messages.
    fn receive(&mut self, request: Request) -> Result<Vec<Message>, ConntrackError> {
        loop {
            // SAFETY: `buf` is valid for writes of its length; MSG_TRUNC makes the call
            // return the datagram's real length so that truncation is detected.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        return Err(ConntrackError::Timeout {
                            request,
                            timeout: self.timeout,
                        });
                    }
                    _ => {
                        return Err(ConntrackError::Io {
                            operation: "receive",
                            request,
                            source: err,
                        });
                    }
                }
            };
            if n > self.buf.len() {
                return Err(ConntrackError::Malformed {
                    request,
                    what: "datagram larger than the receive buffer",
                    offset: self.buf.len(),
                });
            }
            return wire::parse(&self.buf[..n]).map_err(|Malformed { what, offset }| {
                ConntrackError::Malformed {
                    request,
                    what,
                    offset,
                }
            });
        }
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            socklen::<T>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("small struct")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_acknowledgements_count_once_in_any_order_and_enoent_is_not_an_error() {
        let mut acks = BatchAcks::new(10, 4);
        let error = |seq, errno| Message::Error { seq, errno };
        for message in [
            error(12, 0),
            error(12, 0), // a duplicate answers nothing new
            error(9, 0),  // before the batch
            error(14, 0), // after it
            Message::Ignored { seq: 11 },
            error(11, libc::ENOENT),
            error(10, 0),
        ] {
            acks.record(&message).unwrap();
        }
        assert!(!acks.complete());
        assert_eq!(acks.record(&error(13, libc::EPERM)), Err((3, libc::EPERM)));
        assert!(acks.complete());
        assert_eq!(acks.deleted, 2);
    }
}
