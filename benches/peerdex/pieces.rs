//! `cargo bench -- multi` and `-- swarm`: downloads from several capped sources, in a
//! network namespace of the benchmark's own ([`crate::netns`]), where every sender's
//! port is capped at 200 Mbit/s by `tc` on the namespace's loopback.
//!
//! - **multi**: four seeders feed one downloader a 256 MiB file; the reference is
//!   aria2c (`-x4`) fetching from four nginx mirrors capped the same way, in the same
//!   run, each mirror's share checked from its access log.
//! - **swarm**: one seeder capped at 200 Mbit/s and eight registered downloaders, each
//!   with its own uploads capped at 200 Mbit/s, all started at once; the reference is
//!   one download alone under the same caps.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::Stream;
use crate::netns::{Netns, Nginx, free_port, tool};
use crate::transfer::random_file;
use crate::{Opts, row};

/// Each sender's cap, in Mbit/s.
const CAP_MBIT: u32 = 200;

fn namespace(scenario: &str) -> Option<Netns> {
    match Netns::new() {
        Ok(ns) => Some(ns),
        Err(e) => {
            row(scenario, format!("skipped: cannot make a network namespace (needs root): {e}"));
            None
        }
    }
}

/// Waits until `url` answers inside the namespace (nginx prints nothing when ready).
fn wait_for_http(ns: &Netns, dir: &Path, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = ns.start("curl", &["-sf", "-o", "/dev/null", url], dir);
        if probe.finish().success() {
            return;
        }
        assert!(Instant::now() < deadline, "nginx did not answer {url}");
    }
}

pub fn multi(_opts: &Opts) {
    let Some(mut ns) = namespace("multi") else { return };
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 256 << 20;
    let origin = dir.path().join("origin");
    fs::create_dir(&origin).unwrap();
    random_file(&origin.join("big.bin"), size);

    // peerdex: four seeders (hard links of one file), one downloader.
    let (_index, index) = ns.index_server(dir.path());
    let mut seeders = Vec::new();
    for i in 0..4 {
        let folder = dir.path().join(format!("s{i}"));
        fs::create_dir(&folder).unwrap();
        fs::hard_link(origin.join("big.bin"), folder.join("big.bin")).unwrap();
        let (p, addr) = ns.peer(index, &folder);
        ns.cap(addr.port(), CAP_MBIT);
        seeders.push(p);
    }
    let d = dir.path().join("d");
    fs::create_dir(&d).unwrap();
    let (mut pd, _) = ns.peer(index, &d);
    let t = Instant::now();
    pd.send("download big.bin");
    let line = pd.expect(Stream::Out, "downloaded big.bin");
    let ours = t.elapsed().as_secs_f64();
    assert!(crate::transfer::same_content(&origin.join("big.bin"), &d.join("big.bin")));
    drop(seeders);

    // aria2c from four nginx mirrors of the same file, capped the same way.
    let reference = (|| -> Result<(f64, Vec<u64>), String> {
        let aria2c = tool("aria2c", "aria2")?;
        tool("curl", "curl")?;
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let nginx = Nginx::start(dir.path(), &origin, &ports, |bin, args, dir| ns.start(bin, args, dir))?;
        for &p in &ports {
            wait_for_http(&ns, dir.path(), &format!("http://127.0.0.1:{p}/big.bin"));
            ns.cap(p, CAP_MBIT);
        }
        let out = dir.path().join("aria");
        fs::create_dir(&out).unwrap();
        let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}/big.bin")).collect();
        let mut args = vec![
            "-x4",
            "-s4",
            "-k1M",
            "--file-allocation=none",
            "--console-log-level=warn",
            "--summary-interval=0",
            "-d",
            out.to_str().unwrap(),
            "-o",
            "big.bin",
        ];
        args.extend(urls.iter().map(String::as_str));
        let t = Instant::now();
        let mut a = ns.start(aria2c.to_str().unwrap(), &args, dir.path());
        let status = a.finish();
        let took = t.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("aria2c failed: {}", a.dump()));
        }
        assert!(crate::transfer::same_content(&origin.join("big.bin"), &out.join("big.bin")));
        let mut nginx = nginx;
        nginx.proc.kill();
        Ok((took, nginx.bytes_sent()))
    })();
    let mb = size as f64 / 1e6;
    let ours_text = format!("peerdex {ours:.2} s ({:.0} MB/s; {line})", mb / ours);
    match reference {
        Ok((theirs, shares)) => {
            // aria2c asks each mirror for an open-ended range and closes the connection
            // once its segment is in, so the mirrors send more than the file in all;
            // their shares of what was sent show whether the load was spread.
            let total: u64 = shares.iter().sum();
            let shares: Vec<String> =
                shares.iter().map(|b| format!("{:.0}%", *b as f64 * 100.0 / total as f64)).collect();
            row(
                "multi",
                format!(
                    "256 MiB from 4 sources capped at {CAP_MBIT} Mbit/s each: {ours_text}; aria2c -x4 from 4 nginx mirrors {theirs:.2} s ({:.0} MB/s; mirrors' shares of the bytes sent {}); time ratio peerdex/aria2c {:.2} (goal <= 1)",
                    mb / theirs,
                    shares.join(" "),
                    ours / theirs
                ),
            );
        }
        Err(e) => row("multi", format!("{ours_text}; no reference: {e}")),
    }
}

pub fn swarm(_opts: &Opts) {
    let Some(mut ns) = namespace("swarm") else { return };
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 64 << 20;
    let seed = dir.path().join("seed");
    fs::create_dir(&seed).unwrap();
    random_file(&seed.join("f.bin"), size);
    let (_index, index) = ns.index_server(dir.path());
    let (mut seeder_proc, seeder) = ns.peer(index, &seed);
    ns.cap(seeder.port(), CAP_MBIT);

    // Downloaders, registered, their own uploads capped like the seeder's.
    let mut downloaders = Vec::new();
    for i in 0..9 {
        let folder = dir.path().join(format!("d{i}"));
        fs::create_dir(&folder).unwrap();
        let (p, addr) = ns.peer(index, &folder);
        ns.cap(addr.port(), CAP_MBIT);
        downloaders.push((p, folder));
    }
    // One alone: the reference.
    let (alone, alone_dir) = &mut downloaders[0];
    let t = Instant::now();
    alone.send("download f.bin");
    alone.expect(Stream::Out, "downloaded f.bin");
    let one = t.elapsed().as_secs_f64();
    assert!(crate::transfer::same_content(&seed.join("f.bin"), &alone_dir.join("f.bin")));
    // The eight others at once (the first, which now shares it whole, stops sharing).
    downloaders[0].0.send("unregister");
    downloaders[0].0.expect(Stream::Out, "unregistered");
    let t = Instant::now();
    for (p, _) in &downloaders[1..] {
        p.send("download f.bin");
    }
    let mut times = Vec::new();
    let mut lines = Vec::new();
    for (p, _) in &mut downloaders[1..] {
        lines.push(p.expect(Stream::Out, "downloaded f.bin"));
        times.push(t.elapsed().as_secs_f64());
    }
    for (_, folder) in &downloaders[1..] {
        assert!(crate::transfer::same_content(&seed.join("f.bin"), &folder.join("f.bin")));
    }
    let all = times.iter().copied().fold(0.0, f64::max);
    let from_peers = lines.iter().filter(|l| l.contains(" peers)")).count();
    // What the seeder sent in all, as it logged each connection when it closed: the
    // downloaders quit first, then the seeder, which writes out its log as it exits.
    for (p, _) in &mut downloaders {
        p.finish();
    }
    seeder_proc.finish();
    let seeded = crate::netns::sent_bytes(&seeder_proc) as f64 / size as f64;
    let each: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
    row(
        "swarm",
        format!(
            "64 MiB, 1 seeder and 8 downloaders, every upload capped at {CAP_MBIT} Mbit/s: one alone {one:.2} s; 8 at once, all done in {all:.2} s = {:.2}x one alone (goal <= 2; each done at {} s; {from_peers} of 8 got pieces from more than one peer; the seeder sent {seeded:.1}x the file: 1x to the one alone, {:.1}x to the eight)",
            all / one,
            each.join(" "),
            seeded - 1.0
        ),
    );
}
