//! A network namespace of the benchmark's own, with bandwidth caps per TCP port on its
//! loopback, and the reference servers (nginx) and clients (curl, aria2c) the transfer
//! scenarios compare against. Needs root (`ip netns`, `tc`); the namespace is deleted
//! when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::netns::run;
use crate::common::{Proc, Stream};

/// A network namespace with its loopback up and an HTB qdisc on it: traffic is
/// unlimited unless [`Netns::cap`] gives a source port a class of its own.
pub struct Netns {
    name: String,
    classes: u32,
}

impl Netns {
    /// Creates the namespace `peerdex-bench-<pid>`.
    pub fn new() -> Result<Netns, String> {
        let name = format!("peerdex-bench-{}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name, classes: 0 };
        ns.exec_status("ip", &["link", "set", "lo", "up"])?;
        ns.exec_status("tc", &["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "99"])?;
        ns.exec_status(
            "tc",
            &["class", "add", "dev", "lo", "parent", "1:", "classid", "1:99", "htb", "rate", "100gbit"],
        )?;
        Ok(ns)
    }

    fn exec_status(&self, cmd: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", &self.name, cmd];
        all.extend(args);
        run(&all)
    }

    /// Caps the traffic sent from TCP port `port` (in this namespace) at `mbit` Mbit/s.
    pub fn cap(&mut self, port: u16, mbit: u32) {
        self.classes += 1;
        let class = format!("1:{}", self.classes);
        let rate = format!("{mbit}mbit");
        let port = port.to_string();
        self.exec_status(
            "tc",
            &[
                "class", "add", "dev", "lo", "parent", "1:", "classid", &class, "htb", "rate", &rate, "ceil",
                &rate,
            ],
        )
        .unwrap();
        let filter = [
            "filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:", "prio", "1", "u32", "match",
            "ip", "sport", &port, "0xffff", "flowid", &class,
        ];
        self.exec_status("tc", &filter).unwrap();
    }

    /// Starts `bin args` in the namespace, in `dir`.
    pub fn start(&self, bin: &str, args: &[&str], dir: &Path) -> Proc {
        let mut all = vec!["netns", "exec", &self.name, bin];
        all.extend(args);
        Proc::start("ip", &all, dir)
    }

    /// An index server in the namespace; returns it and its address.
    pub fn index_server(&self, dir: &Path) -> (Proc, SocketAddr) {
        let log = dir.join("log.log");
        let args = ["127.0.0.1", "0", "--log-level", "warn", "--log-file", log.to_str().unwrap()];
        let mut p = self.start(env!("CARGO_BIN_EXE_indexing-server"), &args, dir);
        let line = p.expect(Stream::Out, "listening on ");
        (p, line.trim_start_matches("listening on ").parse().unwrap())
    }

    /// A peer in the namespace sharing `folder`, registered; returns it and its file
    /// server's address. Every peer here connects from 127.0.0.1, so the limits per
    /// client address are raised to what a swarm of ten needs (they stand for ten
    /// machines). It logs what it sends (`-v`), for [`sent_bytes`].
    pub fn peer(&self, index: SocketAddr, folder: &Path) -> (Proc, SocketAddr) {
        let port = index.port().to_string();
        let args = [
            "127.0.0.1",
            &port,
            "0",
            folder.to_str().unwrap(),
            "--max-uploads-per-ip",
            "64",
            "--max-connections-per-ip",
            "128",
            "-v",
        ];
        let mut p = self.start(env!("CARGO_BIN_EXE_peer"), &args, folder.parent().unwrap());
        let line = p.expect(Stream::Out, "serving ");
        let addr = line.rsplit(" on ").next().unwrap().parse().unwrap();
        p.send("register");
        p.expect(Stream::Out, "registered ");
        (p, addr)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A free TCP port on 127.0.0.1 (in the current namespace; a new namespace has every
/// port free), for nginx, which cannot be given port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Makes sure a reference tool is installed, installing its Debian package if not;
/// `Err` says why it cannot be had.
pub fn tool(bin: &str, package: &str) -> Result<PathBuf, String> {
    let find = || {
        ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
            .iter()
            .map(|d| Path::new(d).join(bin))
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let _ = Command::new("apt-get").args(["install", "-y", "-q", package]).output();
    find().ok_or_else(|| format!("{bin} is not installed (apt-get install {package})"))
}

/// nginx serving `root` on each of `ports` (one server block per port, each with its
/// own access log of bytes sent), started by `start` (in a namespace or not).
pub struct Nginx {
    pub proc: Proc,
    logs: Vec<PathBuf>,
}

impl Nginx {
    pub fn start(
        dir: &Path,
        root: &Path,
        ports: &[u16],
        start: impl FnOnce(&str, &[&str], &Path) -> Proc,
    ) -> Result<Nginx, String> {
        let nginx = tool("nginx", "nginx-light")?;
        let mut servers = String::new();
        let mut logs = Vec::new();
        for port in ports {
            let log = dir.join(format!("nginx-{port}.log"));
            servers.push_str(&format!(
                "server {{ listen 127.0.0.1:{port}; root {}; access_log {} bytes; }}\n",
                root.display(),
                log.display()
            ));
            logs.push(log);
        }
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; error_log stderr warn; pid {}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ sendfile on; tcp_nopush on; log_format bytes '$bytes_sent'; {servers} }}\n",
            dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let proc = start(nginx.to_str().unwrap(), &["-c", conf_path.to_str().unwrap(), "-e", "stderr"], dir);
        Ok(Nginx { proc, logs })
    }

    /// Bytes each server block has sent, by its access log (complete requests only).
    pub fn bytes_sent(&self) -> Vec<u64> {
        self.logs
            .iter()
            .map(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|n| n.trim().parse::<u64>().ok())
                    .sum()
            })
            .collect()
    }
}

/// Bytes a peer started by [`Netns::peer`] has logged sending so far (each connection
/// logs once it closes).
pub fn sent_bytes(p: &Proc) -> u64 {
    p.lines(Stream::Err)
        .iter()
        .filter(|l| l.contains("] sent \""))
        .filter_map(|l| l.rsplit(": ").next()?.split(' ').next()?.parse::<u64>().ok())
        .sum()
}
