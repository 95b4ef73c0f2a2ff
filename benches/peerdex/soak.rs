//! `cargo bench -- soak --minutes N`: 50 peers churn, downloading, verifying and
//! deleting each other's files, now and then quitting or killed, coming back.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt, SeedableRng};

use crate::common::{Proc, Stream};
use crate::{Opts, index_server, row};

/// A peer of the soak. All 50 run on one host, so each lets one address (this host)
/// have as many connections and uploads as it likes, as an operator running many peers
/// on one machine would.
fn start(index: SocketAddr, folder: &Path, dir: &Path) -> Proc {
    let port = index.port().to_string();
    let args = [
        "127.0.0.1",
        port.as_str(),
        "0",
        folder.to_str().unwrap(),
        "--max-connections-per-ip",
        "1024",
        "--max-uploads-per-ip",
        "512",
    ];
    let mut p = Proc::start(env!("CARGO_BIN_EXE_peer"), &args, dir);
    p.expect(Stream::Out, "serving ");
    p
}

/// Content of file `k` of soak peer `p`: 64 KiB from a seed, so any copy can be
/// checked against its hash.
fn content(p: usize, k: usize) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64((p * 100 + k) as u64);
    let mut bytes = vec![0u8; 64 * 1024];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// 50 peers churn for `--minutes`: each downloads random files of the others,
/// verifies and deletes them, and now and then quits or is killed and comes back.
pub fn run(opts: &Opts) {
    const PEERS: usize = 50;
    const FILES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (server, index) = index_server(dir.path(), &[]);
    let expected: Arc<HashMap<String, [u8; 32]>> = Arc::new(
        (0..PEERS)
            .flat_map(|p| (0..FILES).map(move |k| (p, k)))
            .map(|(p, k)| {
                let root = peerdex::content::Tree::of_bytes(&content(p, k)).root;
                (format!("p{p:02}-{k}.bin"), root)
            })
            .collect(),
    );
    let folders: Vec<PathBuf> = (0..PEERS)
        .map(|p| {
            let f = dir.path().join(format!("peer{p:02}"));
            fs::create_dir(&f).unwrap();
            for k in 0..FILES {
                fs::write(f.join(format!("p{p:02}-{k}.bin")), content(p, k)).unwrap();
            }
            f
        })
        .collect();
    let start_peer = |folder: &Path| -> Proc { start(index, folder, dir.path()) };
    let mut peers: Vec<Proc> = folders.iter().map(|f| start_peer(f)).collect();
    for p in peers.iter_mut() {
        p.send("register");
        p.expect(Stream::Out, "registered");
    }
    let (rss0, threads0) = server.rss_and_threads();
    let deadline = Instant::now() + Duration::from_secs_f64(opts.minutes * 60.0);
    #[derive(Default)]
    struct Tally {
        verified: u64,
        corrupt: u64,
        unavailable: u64,
        lost: u64,
        restarts: u64,
    }
    let workers: Vec<_> = peers
        .drain(..)
        .enumerate()
        .map(|(me, mut proc)| {
            let (folder, expected) = (folders[me].clone(), Arc::clone(&expected));
            let root = dir.path().to_path_buf();
            thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
                let mut t = Tally::default();
                while Instant::now() < deadline {
                    let roll = rng.random_range(0..100);
                    if roll < 3 {
                        // Leave and come back: a clean quit, or a SIGKILL.
                        if roll == 0 {
                            proc.kill();
                        } else {
                            proc.finish();
                        }
                        proc = start(index, &folder, &root);
                        proc.send("register");
                        proc.expect(Stream::Out, "registered");
                        t.restarts += 1;
                        continue;
                    }
                    let other = (me + rng.random_range(1..PEERS)) % PEERS;
                    let name = format!("p{other:02}-{}.bin", rng.random_range(0..FILES));
                    proc.send(&format!("download {name}"));
                    let done = format!("downloaded {name} ");
                    let failed = format!("cannot download \"{name}\": ");
                    match proc.expect_any(&[&done, &failed], Duration::from_secs(60)) {
                        None => t.lost += 1,
                        Some(line) if line.contains(&failed) => t.unavailable += 1,
                        Some(_) => {
                            let got = fs::read(folder.join(&name))
                                .map(|b| peerdex::content::Tree::of_bytes(&b).root);
                            if got.ok() == expected.get(&name).copied() {
                                t.verified += 1;
                            } else {
                                t.corrupt += 1;
                            }
                            proc.send(&format!("delete {name}"));
                            if proc
                                .expect_any(&[&format!("deleted {name}")], Duration::from_secs(60))
                                .is_none()
                            {
                                t.lost += 1;
                            }
                        }
                    }
                }
                (t, proc)
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut peers = Vec::new();
    for w in workers {
        let (t, proc) = w.join().unwrap();
        total.verified += t.verified;
        total.corrupt += t.corrupt;
        total.unavailable += t.unavailable;
        total.lost += t.lost;
        total.restarts += t.restarts;
        peers.push(proc);
    }
    let (rss1, threads1) = server.rss_and_threads();
    row(
        "soak",
        format!(
            "{PEERS} peers for {:.1} min: {} downloads verified, {} corrupt, {} lost, {} refused while the source was away; {} restarts",
            opts.minutes, total.verified, total.corrupt, total.lost, total.unavailable, total.restarts
        ),
    );
    row(
        "soak",
        format!(
            "server threads {threads0} -> {threads1}, RSS {:.1} -> {:.1} MiB",
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0
        ),
    );
    drop(peers);
}
