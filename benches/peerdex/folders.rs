//! Folders (issue 10): registering a tree of 100,000 files in 1,000 folders, the first
//! time and again on a second start (with the hash cache), against `cp -r` of the same
//! tree; then one peer downloading a folder of 1,000 files from another, against
//! rsync fetching the same folder from an rsync daemon on loopback, in the same run.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::common::{Proc, Stream};
use crate::netns::tool;
use crate::{Opts, index_server, row};

const FOLDERS: usize = 1000;
const PER_FOLDER: usize = 100;
const DOWNLOAD: usize = 1000;

pub fn run(_opts: &Opts) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let mut rng = rand::rng();
    let mut content = vec![0u8; 4096];
    for d in 0..FOLDERS {
        let folder = tree.join(format!("folder-{d:04}"));
        fs::create_dir_all(&folder).unwrap();
        for f in 0..PER_FOLDER {
            rng.fill_bytes(&mut content[..1024]);
            fs::write(folder.join(format!("file-{f:03}.bin")), &content[..1024]).unwrap();
        }
    }
    fs::create_dir(tree.join("dl")).unwrap();
    for f in 0..DOWNLOAD {
        rng.fill_bytes(&mut content);
        fs::write(tree.join(format!("dl/file-{f:04}.bin")), &content).unwrap();
    }
    let total = FOLDERS * PER_FOLDER + DOWNLOAD;

    // The reference for registering: copying the tree (reading every byte, as hashing
    // does, and writing it too).
    let copy = dir.path().join("copy");
    let t = Instant::now();
    assert!(Command::new("cp").arg("-r").arg(&tree).arg(&copy).status().unwrap().success());
    let cp = t.elapsed().as_secs_f64();
    fs::remove_dir_all(&copy).unwrap();

    let (_server, index) = index_server(dir.path(), &[]);
    let register = || {
        let (mut p, _) = Proc::peer(index, &tree);
        let t = Instant::now();
        p.send("register");
        p.expect(Stream::Out, &format!("registered {total} files"));
        (p, t.elapsed().as_secs_f64())
    };
    let (first_peer, first) = register();
    drop(first_peer);
    let (_seeder, second) = register();

    // One folder of 1,000 files, peer to peer.
    let b = dir.path().join("b");
    fs::create_dir(&b).unwrap();
    let (mut pb, _) = Proc::peer(index, &b);
    let t = Instant::now();
    pb.send("download dl/");
    pb.expect(Stream::Out, &format!("downloading {DOWNLOAD} files under dl/"));
    for _ in 0..DOWNLOAD {
        pb.expect(Stream::Out, "downloaded dl/");
    }
    let peerdex = t.elapsed().as_secs_f64();
    for f in [0, DOWNLOAD - 1] {
        let name = format!("dl/file-{f:04}.bin");
        assert_eq!(fs::read(tree.join(&name)).unwrap(), fs::read(b.join(&name)).unwrap());
    }

    let rsync = match rsync_folder(dir.path(), &tree) {
        Ok(secs) => format!(
            "rsync from a daemon on loopback {secs:.2} s ({:.0} files/s; time ratio peerdex/rsync {:.2})",
            DOWNLOAD as f64 / secs,
            peerdex / secs
        ),
        Err(e) => format!("rsync: {e}"),
    };
    row(
        "folders",
        format!(
            "register {total} files in {} folders: {first:.2} s ({:.0} files/s), again with the hash cache {second:.2} s ({:.0} files/s); cp -r of the tree {cp:.2} s ({:.0} files/s). Download a folder of {DOWNLOAD} files of 4 KiB: peerdex {peerdex:.2} s ({:.0} files/s); {rsync}",
            FOLDERS + 1,
            total as f64 / first,
            total as f64 / second,
            total as f64 / cp,
            DOWNLOAD as f64 / peerdex,
        ),
    );
}

/// Seconds for `rsync -a` to fetch `tree/dl/` from an rsync daemon serving `tree` on
/// 127.0.0.1, into a fresh folder in `dir`.
fn rsync_folder(dir: &Path, tree: &Path) -> Result<f64, String> {
    let rsync = tool("rsync", "rsync")?;
    let conf = dir.join("rsyncd.conf");
    let log = dir.join("rsyncd.log");
    fs::write(
        &conf,
        format!(
            "use chroot = no\nlog file = {}\n[tree]\n  path = {}\n  read only = yes\n",
            log.display(),
            tree.display()
        ),
    )
    .unwrap();
    // rsync's daemon takes a port number only: a free one, found by binding port 0.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut daemon = Command::new(&rsync)
        .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--config={}", conf.display()))
        .spawn()
        .map_err(|e| format!("cannot start rsync: {e}"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            let _ = daemon.kill();
            return Err("the rsync daemon did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a port, not ordering threads
    }
    let dest = dir.join("rsynced");
    let t = Instant::now();
    let status =
        Command::new(&rsync).arg("-a").arg(format!("rsync://127.0.0.1:{port}/tree/dl/")).arg(&dest).status();
    let secs = t.elapsed().as_secs_f64();
    let _ = daemon.kill();
    let _ = daemon.wait();
    match status {
        Ok(s) if s.success() => Ok(secs),
        other => Err(format!("rsync failed: {other:?}")),
    }
}
