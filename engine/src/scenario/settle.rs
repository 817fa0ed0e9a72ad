//! Keeps the paused clock still while loopback traffic is in flight.
//!
//! tokio auto-advances a paused clock when its runtime has nothing to run
//! and one non-blocking poll of the I/O driver finds nothing ready: it then
//! jumps to the next timer. A scenario's client, server and mock all talk
//! over loopback TCP in this process, and the kernel delivers a loopback
//! segment in softirq context: on a loaded machine that work is deferred to
//! `ksoftirqd`, which waits for a CPU (a queueing discipline on `lo` delays
//! it the same way). Bytes or a FIN that a task has written are then
//! neither readable at the other end nor known to tokio as pending, the
//! runtime parks, and virtual time jumps: Sluice's close of the upstream
//! was not yet visible to the mock, so the mock's 60 s stall ran out first
//! (issue 17, item 7).
//!
//! [`wait`] runs as the scenario runtime's `on_thread_park` hook, i.e.
//! right before every park, the only place the clock auto-advances. It
//! returns once every TCP connection of this process has settled: for each
//! pair of sockets, the receiving end has counted every byte (and the FIN)
//! the sending end transmitted, a connection whose other end was closed has
//! seen that close, and each connection waiting to be accepted is in its
//! listener's queue. Then the driver's poll sees everything there is to see,
//! and a jump of the clock happens only when nothing real is pending. The
//! check reads the kernel's own counters (`TCP_INFO`), so it does not depend
//! on how long delivery takes: it is exact, not a grace period.
//!
//! Work on plain threads is beyond its sight; Sluice runs blocking work in
//! `spawn_blocking`, which tokio itself counts (auto-advance waits for it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest real time one park waits for loopback traffic. Delivery
/// takes microseconds, or milliseconds on a starved machine; past this the
/// clock is let go and the run reports that it may not be reproducible.
pub const LIMIT: Duration = Duration::from_secs(5);

/// Waits (blocking this thread, bounded by [`LIMIT`]) until every TCP
/// connection of this process has settled; counts a wait that ran out in
/// `gave_up`.
pub fn wait(gave_up: &AtomicUsize) {
    let started = Instant::now();
    let mut rounds = 0u32;
    while !settled() {
        if started.elapsed() > LIMIT {
            gave_up.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Give the CPU to whoever delivers the segments (ksoftirqd may
        // be waiting for this very core), then back off a little.
        if rounds < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
        rounds += 1;
    }
}

/// Whether no loopback traffic of this process is in flight.
pub fn settled() -> bool {
    imp::settled(&imp::sockets())
}

/// Whether the other end of this process's connection from `local` to
/// `peer` has read every byte sent on it: received all of it and left
/// nothing unread in its socket. Once that end is closed, true only when
/// this end has seen the close. True when this connection is not a
/// socket of this process. The mock's floods wait on it.
pub fn read_by_peer(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> bool {
    imp::read_by_peer(local, peer)
}

#[cfg(not(target_os = "linux"))]
mod imp {
    // Elsewhere the counters are not read: the runner relies on tokio alone.
    pub struct Sock;
    pub fn sockets() -> Vec<Sock> {
        Vec::new()
    }
    pub fn settled(_: &[Sock]) -> bool {
        true
    }
    pub fn read_by_peer(_: std::net::SocketAddr, _: std::net::SocketAddr) -> bool {
        true
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    // TCP states (include/net/tcp_states.h).
    const ESTABLISHED: u8 = 1;
    const SYN_SENT: u8 = 2;
    const SYN_RECV: u8 = 3;
    const FIN_WAIT1: u8 = 4;
    const FIN_WAIT2: u8 = 5;
    const CLOSING: u8 = 11;
    const LAST_ACK: u8 = 9;
    const LISTEN: u8 = 10;

    // Offsets in `struct tcp_info` (include/uapi/linux/tcp.h); the byte
    // counters up to `tcpi_bytes_retrans` exist since Linux 4.19.
    const UNACKED: usize = 24;
    const BYTES_RECEIVED: usize = 128;
    const BYTES_SENT: usize = 200;
    const BYTES_RETRANS: usize = 208;
    const NEEDED: usize = 216;

    /// One TCP socket of this process, as the kernel counts it.
    #[derive(Debug, Clone)]
    pub struct Sock {
        pub state: u8,
        pub local: SocketAddr,
        pub peer: Option<SocketAddr>,
        /// Data bytes transmitted, retransmissions not counted again.
        pub sent: u64,
        /// Sequence space received: data bytes plus one for a FIN.
        pub received: u64,
        /// On a listener: connections waiting in its accept queue.
        pub queued: u32,
    }

    impl Sock {
        /// It sent a FIN (which takes one byte of sequence space).
        fn fin_sent(&self) -> bool {
            matches!(self.state, FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK)
        }

        /// Open for data from its peer, which may close it any moment.
        fn expects_peer(&self) -> bool {
            matches!(self.state, ESTABLISHED | FIN_WAIT1 | FIN_WAIT2)
        }
    }

    /// The TCP sockets among this process's file descriptors.
    pub fn sockets() -> Vec<Sock> {
        descriptors().filter_map(sock).collect()
    }

    fn descriptors() -> impl Iterator<Item = i32> {
        std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    }

    /// See `super::read_by_peer`.
    pub fn read_by_peer(local: SocketAddr, peer: SocketAddr) -> bool {
        let (mut mine, mut theirs) = (None, None);
        for fd in descriptors() {
            let Some(s) = sock(fd) else { continue };
            if s.local == local && s.peer == Some(peer) {
                mine = Some(s);
            } else if s.local == peer && s.peer == Some(local) {
                theirs = Some((fd, s));
            }
        }
        let Some(mine) = mine else {
            return true;
        };
        let Some((fd, theirs)) = theirs else {
            // The other end is closed: wait until this end has seen its
            // FIN (writes until then would all be taken, and cut short
            // only when the reset comes back, however late that is).
            return !mine.expects_peer();
        };
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, the bytes waiting to be read.
        // A descriptor closed and reused meanwhile makes the call fail or
        // describe another socket; either is safe (the next check repeats).
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut unread) };
        theirs.received >= mine.sent && rc == 0 && unread == 0
    }

    fn sock(fd: i32) -> Option<Sock> {
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes and the kernel writes
        // at most `len` bytes and stores the length it wrote. A descriptor
        // that is not a TCP socket (or was closed and reused meanwhile)
        // makes the call fail or describe another socket; either is safe.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 || (len as usize) < NEEDED {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or([0; 8]));
        Some(Sock {
            state: info[0],
            local: address(fd, libc::getsockname)?,
            peer: address(fd, libc::getpeername),
            sent: u64_at(BYTES_SENT).saturating_sub(u64_at(BYTES_RETRANS)),
            received: u64_at(BYTES_RECEIVED),
            queued: u32_at(UNACKED),
        })
    }

    type NameFn = unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32;

    fn address(fd: i32, name: NameFn) -> Option<SocketAddr> {
        // SAFETY: an all-zero `sockaddr_storage` is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `ss` is large enough for any address and `len` says so.
        if unsafe { name(fd, (&raw mut ss).cast(), &mut len) } != 0 {
            return None;
        }
        match i32::from(ss.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a `sockaddr_in`.
                let a: libc::sockaddr_in = unsafe { std::ptr::read((&raw const ss).cast()) };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a `sockaddr_in6`.
                let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const ss).cast()) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, 0).into())
            }
            _ => None,
        }
    }

    /// Whether nothing is in flight between `socks`: see the module's doc.
    pub fn settled(socks: &[Sock]) -> bool {
        let mut listeners: HashMap<SocketAddr, u32> = HashMap::new();
        let mut ends: HashMap<(SocketAddr, SocketAddr), &Sock> = HashMap::new();
        for s in socks {
            match s.state {
                // A handshake segment is on its way.
                SYN_SENT | SYN_RECV => return false,
                LISTEN => {
                    listeners.insert(s.local, s.queued);
                }
                _ => {
                    if let Some(peer) = s.peer {
                        ends.insert((s.local, peer), s);
                    }
                }
            }
        }
        let mut to_accept: HashMap<SocketAddr, u32> = HashMap::new();
        for (&(local, peer), s) in &ends {
            match ends.get(&(peer, local)) {
                Some(other) => {
                    if other.received != s.sent + u64::from(s.fin_sent()) {
                        return false;
                    }
                }
                None if listeners.contains_key(&peer) => {
                    if s.expects_peer() {
                        *to_accept.entry(peer).or_default() += 1;
                    }
                }
                // The other end's descriptor is closed: its FIN or reset
                // is on its way until this end has seen it.
                None => {
                    if s.expects_peer() {
                        return false;
                    }
                }
            }
        }
        // Not yet accepted: the listener's queue holds them once the last
        // handshake segment has arrived.
        to_accept
            .iter()
            .all(|(l, n)| listeners.get(l).is_some_and(|q| q >= n))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    use super::imp::{Sock, settled, sockets};

    fn find(socks: &[Sock], s: &TcpStream) -> Sock {
        let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        socks
            .iter()
            .find(|k| k.local == local && k.peer == Some(peer))
            .unwrap()
            .clone()
    }

    #[test]
    fn the_kernel_counters_pair_up() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut a, _) = l.accept().unwrap();
        c.write_all(b"0123456789").unwrap();
        let mut buf = [0u8; 10];
        a.read_exact(&mut buf).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(a.read(&mut buf).unwrap(), 0);
        let socks = sockets();
        let (cs, as_) = (find(&socks, &c), find(&socks, &a));
        assert_eq!((cs.sent, as_.received), (10, 11), "data, then a FIN");
        assert_eq!(cs.peer, Some(as_.local));
    }

    fn sock(state: u8, local: u16, peer: Option<u16>, sent: u64, received: u64) -> Sock {
        let at = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        Sock {
            state,
            local: at(local),
            peer: peer.map(at),
            sent,
            received,
            queued: 0,
        }
    }

    #[test]
    fn in_flight_bytes_fins_handshakes_and_closes_are_unsettled() {
        let est = 1;
        let fin_wait1 = 4;
        let close_wait = 8;
        // Both ends have counted everything: settled.
        let pair = [sock(est, 1, Some(2), 100, 7), sock(est, 2, Some(1), 7, 100)];
        assert!(settled(&pair));
        // 40 bytes written but not yet received.
        let pair = [sock(est, 1, Some(2), 140, 7), sock(est, 2, Some(1), 7, 100)];
        assert!(!settled(&pair));
        // A FIN sent but not yet received, then received.
        let mut pair = [
            sock(fin_wait1, 1, Some(2), 100, 7),
            sock(est, 2, Some(1), 7, 100),
        ];
        assert!(!settled(&pair));
        pair[1] = sock(close_wait, 2, Some(1), 7, 101);
        assert!(settled(&pair));
        // The other end's descriptor closed: unsettled until this end saw it.
        assert!(!settled(&[sock(est, 2, Some(1), 7, 100)]));
        assert!(settled(&[sock(close_wait, 2, Some(1), 7, 101)]));
        // A handshake under way.
        assert!(!settled(&[sock(2, 3, Some(9), 0, 0)]));
        // Connected to a listener of ours: settled once it is queued.
        let mut listener = sock(10, 9, None, 0, 0);
        let client = sock(est, 3, Some(9), 0, 0);
        assert!(!settled(&[listener.clone(), client.clone()]));
        listener.queued = 1;
        assert!(settled(&[listener, client]));
    }
}
