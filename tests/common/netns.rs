//! A network namespace joined to this one by a veth pair, for tests of what crosses a
//! network: a link whose packets from one port can be dropped (`tc`), as when a host
//! vanishes without closing its connections. Needs root and iproute2 with the `htb`
//! queueing discipline and the `u32` filter; [`Link::new`] says so and returns `None`
//! where they are missing, unless the test runs as root, where a failure is a failure.

use std::ffi::OsStr;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;

use super::Proc;

/// The namespace and its link; both are deleted when dropped.
pub struct Link {
    ns: String,
    /// This side's end of the link.
    outer_dev: String,
    /// The inner end of the link, in the namespace.
    dev: String,
    /// This side's address on the link.
    pub outer: Ipv4Addr,
    /// The namespace's address on the link.
    pub inner: Ipv4Addr,
}

/// Runs `args[0]` with the rest as its arguments; its stderr is the error if it fails.
pub fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Link {
    /// A fresh namespace `pdx-<pid>-<k>` with the link `10.213.k.1` (here) to
    /// `10.213.k.2` (there), whose packets flow until [`Link::hold`].
    pub fn new(test: &str) -> Option<Link> {
        let mut last = String::new();
        // A few tries: another test may have taken the same number.
        for _ in 0..8 {
            let k: u8 = rand::random_range(1..=250);
            let link = Link {
                ns: format!("pdx-{}-{k}", std::process::id()),
                outer_dev: format!("pdxo{k}"),
                dev: format!("pdxi{k}"),
                outer: Ipv4Addr::new(10, 213, k, 1),
                inner: Ipv4Addr::new(10, 213, k, 2),
            };
            match link.make() {
                Ok(()) => return Some(link),
                Err(e) => last = e,
            }
        }
        if is_root() {
            panic!("{test}: cannot make a network namespace: {last}");
        }
        eprintln!("skipped {test}: cannot make a network namespace ({last}); run as root");
        None
    }

    fn make(&self) -> Result<(), String> {
        let (ns, dev, outer_dev) = (self.ns.as_str(), self.dev.as_str(), self.outer_dev.as_str());
        let (outer, inner) = (format!("{}/30", self.outer), format!("{}/30", self.inner));
        run(&["ip", "netns", "add", ns])?;
        let exec = |args: &[&str]| -> Result<(), String> {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend(args);
            run(&all)
        };
        run(&["ip", "link", "add", outer_dev, "type", "veth", "peer", "name", dev, "netns", ns])?;
        run(&["ip", "addr", "add", &outer, "dev", outer_dev])?;
        run(&["ip", "link", "set", outer_dev, "up"])?;
        exec(&["ip", "addr", "add", &inner, "dev", dev])?;
        exec(&["ip", "link", "set", dev, "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        // What this side sends into the link flows through class 99; class 1 drops
        // every packet (a queue of none). The drop is on this side, so that the
        // namespace's own connections see no error of theirs: only silence.
        run(&["tc", "qdisc", "add", "dev", outer_dev, "root", "handle", "1:", "htb", "default", "99"])?;
        for class in ["1:99", "1:1"] {
            run(&[
                "tc", "class", "add", "dev", outer_dev, "parent", "1:", "classid", class, "htb", "rate",
                "10gbit",
            ])?;
        }
        run(&[
            "tc", "qdisc", "add", "dev", outer_dev, "parent", "1:1", "handle", "10:", "pfifo", "limit", "0",
        ])
    }

    /// Drops every packet sent back to the namespace from `port` on this side: what the
    /// namespace sends to `port` arrives, but is never acknowledged nor answered, as
    /// with a host that vanished.
    pub fn hold(&self, port: u16) {
        let port = port.to_string();
        run(&[
            "tc",
            "filter",
            "add",
            "dev",
            &self.outer_dev,
            "protocol",
            "ip",
            "parent",
            "1:",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "sport",
            &port,
            "0xffff",
            "flowid",
            "1:1",
        ])
        .unwrap();
    }

    /// Lets packets flow again.
    pub fn release(&self) {
        run(&["tc", "filter", "del", "dev", &self.outer_dev, "parent", "1:", "prio", "1"]).unwrap();
    }

    /// Starts `bin args` in the namespace, in `dir` (`ip netns exec` becomes `bin`, so
    /// the guard kills `bin` itself).
    pub fn start<S: AsRef<OsStr>>(&self, bin: &str, args: &[S], dir: &Path) -> Proc {
        let mut all: Vec<&OsStr> =
            vec![OsStr::new("netns"), OsStr::new("exec"), OsStr::new(&self.ns), OsStr::new(bin)];
        all.extend(args.iter().map(AsRef::as_ref));
        Proc::start("ip", &all, dir)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end of the link deletes both, at once; the namespace itself lives
        // on, unnamed, while sockets of its own still close (a dropped connection's).
        let _ = run(&["ip", "link", "del", &self.outer_dev]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

/// Forwards every connection made to a listener on `at` (port 0: any) to `to`, for as
/// long as the test process lives; returns the listener's address.
pub fn forward(at: SocketAddr, to: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(at).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for near in listener.incoming().flatten() {
            let Ok(far) = TcpStream::connect(to) else { continue };
            let pipe = |from: TcpStream, to: TcpStream| {
                thread::spawn(move || {
                    let _ = io::copy(&mut &from, &mut &to);
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
            let (near2, far2) = (near.try_clone().unwrap(), far.try_clone().unwrap());
            pipe(near, far);
            pipe(far2, near2);
        }
    });
    addr
}
