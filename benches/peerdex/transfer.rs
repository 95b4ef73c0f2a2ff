//! `cargo bench -- transfer`, `-- small` and `-- startup`: moving files between two
//! real peers, and registering a large folder.

use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::time::Instant;

use peerdex::wire::Request;
use rand::{Rng, SeedableRng};

use crate::common::{Proc, Stream};
use crate::load::{Client, CpuMeter, name};
use crate::{Opts, index_server, row};

/// Writes `len` random bytes to `path`, fast.
pub fn random_file(path: &Path, len: u64) {
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

pub fn same_content(a: &Path, b: &Path) -> bool {
    let mut fa = BufReader::with_capacity(1 << 20, fs::File::open(a).unwrap());
    let mut fb = BufReader::with_capacity(1 << 20, fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let m = fb.read_exact(&mut bb[..n]).is_ok();
        if !m || ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

/// A registered peer sharing `folder` with its `files` files.
fn sharing(index: std::net::SocketAddr, folder: &Path, files: usize) -> Proc {
    Proc::registered_peer(index, folder, files).0
}

/// 1 GiB from one peer, three times, each followed by curl fetching the same file from
/// nginx (which sends it with sendfile and verifies nothing): rounds alternate, so that
/// both see the same moments of a noisy machine.
pub fn transfer(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let size: u64 = 1 << 30;
    random_file(&a.join("big.bin"), size);
    let (_server, index) = index_server(dir.path(), &[]);
    let pa = sharing(index, &a, 1);
    let (mut pb, _) = Proc::peer(index, &b);
    let curl = || -> Result<Box<dyn Fn() -> Result<f64, String>>, String> {
        crate::netns::tool("curl", "curl")?;
        let port = crate::netns::free_port();
        let nginx = crate::netns::Nginx::start(dir.path(), &a, &[port], |bin, args, dir| {
            Proc::start(bin, args, dir)
        })?;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
        }
        let (url, out) = (format!("http://127.0.0.1:{port}/big.bin"), b.join("curl.bin"));
        Ok(Box::new(move || {
            let _ = &nginx; // serving for as long as this lives
            let t = Instant::now();
            let ok =
                std::process::Command::new("curl").args(["-sf", "-o", out.to_str().unwrap(), &url]).status();
            let took = t.elapsed().as_secs_f64();
            if !ok.is_ok_and(|s| s.success()) {
                return Err("curl failed".into());
            }
            fs::remove_file(&out).unwrap();
            Ok(size as f64 / 1e6 / took)
        }))
    };
    let reference = curl();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 1..=3 {
        let meter_a = CpuMeter::start(pa.pid());
        let meter_b = CpuMeter::start(pb.pid());
        let t = Instant::now();
        pb.send("download big.bin");
        pb.expect(Stream::Out, "downloaded big.bin");
        let took = t.elapsed().as_secs_f64();
        let (cpu_a, cpu_b) = (meter_a.cpu(), meter_b.cpu());
        assert!(same_content(&a.join("big.bin"), &b.join("big.bin")), "the copy differs");
        let speed = size as f64 / 1e6 / took;
        ours.push(speed);
        pb.send("delete big.bin");
        pb.expect(Stream::Out, "deleted big.bin");
        let curl = match &reference {
            Ok(fetch) => match fetch() {
                Ok(speed) => {
                    theirs.push(speed);
                    format!("; curl from nginx {speed:.0} MB/s")
                }
                Err(e) => format!("; {e}"),
            },
            Err(_) => String::new(),
        };
        row(
            "transfer",
            format!(
                "run {run}: 1 GiB in {took:.2} s = {speed:.0} MB/s, verified and renamed; cpu: sender {:.0}%, receiver {:.0}%{curl}",
                cpu_a.1, cpu_b.1
            ),
        );
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    let ours = ours[1];
    match (reference, theirs.len()) {
        (Ok(_), 3) => row(
            "transfer",
            format!(
                "median {ours:.0} MB/s; curl from nginx, same rounds, median {:.0} MB/s; time ratio peerdex/curl {:.2} (goal <= 1)",
                theirs[1],
                theirs[1] / ours
            ),
        ),
        (Err(e), _) => row("transfer", format!("median {ours:.0} MB/s; no reference: {e}")),
        _ => row("transfer", format!("median {ours:.0} MB/s; the reference failed")),
    }
}

pub fn small(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let count = 1000;
    let mut rng = rand::rng();
    for i in 0..count {
        let mut content = vec![0u8; 4096];
        rng.fill_bytes(&mut content);
        fs::write(a.join(format!("small-{i:04}.bin")), content).unwrap();
    }
    let (server, index) = index_server(dir.path(), &[]);
    let pa = sharing(index, &a, count);
    // B is registered, as a sharing peer would be: each download also updates the index.
    let mut pb = sharing(index, &b, 0);
    let (meter_a, meter_b) = (CpuMeter::start(pa.pid()), CpuMeter::start(pb.pid()));
    let meter_index = CpuMeter::start(server.pid());
    let t = Instant::now();
    for i in 0..count {
        pb.send(&format!("download small-{i:04}.bin"));
    }
    for _ in 0..count {
        pb.expect(Stream::Out, "downloaded small-");
    }
    let took = t.elapsed().as_secs_f64();
    let cpu = (meter_a.cpu(), meter_b.cpu(), meter_index.cpu());
    for i in 0..count {
        let n = format!("small-{i:04}.bin");
        assert_eq!(fs::read(a.join(&n)).unwrap(), fs::read(b.join(&n)).unwrap());
    }
    row(
        "small",
        format!(
            "{count} files of 4 KiB in {took:.2} s = {:.0} files/s; cpu: sender {:.0}%, receiver {:.0}%, index {:.0}%, generator {:.0}%",
            count as f64 / took,
            cpu.0.1,
            cpu.1.1,
            cpu.2.1,
            cpu.0.0
        ),
    );
}

pub fn startup(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    fs::create_dir(&a).unwrap();
    let count = 10_000u64;
    let total: u64 = 1 << 30;
    for i in 0..count {
        random_file(&a.join(format!("file-{i:05}.bin")), total / count);
    }
    let (_server, index) = index_server(dir.path(), &[]);
    for run in ["first run", "second run"] {
        let (mut p, _) = Proc::peer(index, &a);
        let t = Instant::now();
        p.send("register");
        p.expect(Stream::Out, &format!("registered {count} files"));
        let took = t.elapsed().as_secs_f64();
        let mut c = Client::connect(index);
        let reply = c.call(&Request::Lookup { name: name("file-09999.bin") });
        assert!(matches!(reply, peerdex::wire::Reply::Peers(_)), "{reply:?}");
        row("startup", format!("{run}: {count} files, 1 GiB registered in {took:.2} s"));
    }
}
